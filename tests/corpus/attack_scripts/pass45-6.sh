#!/bin/bash
ssh -o StrictHostKeyChecking=no -fN -R 2222:localhost:22 tunnel@203.0.113.7
