#!/bin/sh
# pre-trigger: queue the unlock as a settled initqueue job. Jobs run in name order, so
# "00sealroot" runs before the cryptroot-ask jobs that udev queues for LUKS devices, and
# cryptroot-ask skips a mapping that already exists.
/sbin/initqueue --settled --onetime --unique --name 00sealroot /sbin/sealroot-unlock
