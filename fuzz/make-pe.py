#!/usr/bin/env python3
"""Small PE images for the pe_image seeds (fuzz/make-seeds.sh): a PE32+ that is also a
Linux bzImage (setup header "HdrS", protocol 2.15, as the EFI stub kernels are), with two
sections and a certificate table; a PE32 without data directory 4; one with data after
the sections. Usage: make-pe.py DIR"""
import struct
import sys


def pe(magic=0x20B, bzimage=True, cert=True, trailer=b""):
    img = bytearray(0x400)
    img[0:2] = b"MZ"
    struct.pack_into("<I", img, 0x3C, 0x40)
    img[0x40:0x44] = b"PE\0\0"
    plus = magic == 0x20B
    dirs = 16 if cert else 4
    opt_size = (112 if plus else 96) + 8 * dirs
    struct.pack_into("<HHIIIHH", img, 0x44, 0x8664, 2, 0, 0, 0, opt_size, 0x0206)
    opt = 0x58
    struct.pack_into("<H", img, opt, magic)
    struct.pack_into("<I", img, opt + 60, 0x400)  # SizeOfHeaders
    struct.pack_into("<I", img, opt + 64, 0x1234)  # CheckSum (not hashed)
    struct.pack_into("<I", img, opt + (108 if plus else 92), dirs)
    body = 0x400
    sections = [(b".text\0\0\0", 0x200), (b".data\0\0\0", 0x100)]
    table = opt + opt_size
    raw = body
    for i, (name, size) in enumerate(sections):
        struct.pack_into("<8sIIII", img, table + 40 * i, name, size, 0x1000 * (i + 1), size, raw)
        raw += size
    data = bytearray()
    for i, (_, size) in enumerate(sections):
        data += bytes((j * (i + 3)) & 0xFF for j in range(size))
    cert_blob = b""
    if cert:
        cert_blob = struct.pack("<IHH", 0x40, 0x200, 2) + b"\x30" * 0x38
        struct.pack_into("<II", img, opt + (112 if plus else 96) + 4 * 8, raw + len(trailer), len(cert_blob))
    if bzimage:
        img[0x1F1] = 1  # setup_sects
        img[0x202:0x206] = b"HdrS"
        struct.pack_into("<H", img, 0x206, 0x020F)
        img[0x211] = 0x01  # LOADED_HIGH
        struct.pack_into("<I", img, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
        struct.pack_into("<H", img, 0x236, 0x007F)  # xloadflags
    return bytes(img + data + trailer + cert_blob)


out = sys.argv[1]
open(f"{out}/bzimage-pe32plus.efi", "wb").write(pe())
open(f"{out}/pe32-no-cert-dir.efi", "wb").write(pe(magic=0x10B, bzimage=False, cert=False))
open(f"{out}/trailer.efi", "wb").write(pe(bzimage=False, trailer=b"\xAA" * 64))
