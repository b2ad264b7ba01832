#!/bin/sh
# pre-trigger: queue the unlock as a settled initqueue job. Jobs run in name order, so
# "00sealroot" runs before the cryptroot-ask jobs that udev queues for LUKS devices, and
# cryptroot-ask skips a mapping that already exists.
# An empty environment, before any shell reads it: kernel parameters become init's
# environment, and a bash /bin/sh would take BASH_FUNC_* or SHELLOPTS from it.
/sbin/initqueue --settled --onetime --unique --name 00sealroot \
    /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/sh /sbin/sealroot-unlock
