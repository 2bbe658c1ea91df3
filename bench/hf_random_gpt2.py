#!/usr/bin/env python3
"""Saves random GPT-2-small weights (seed 0) as a Hugging Face folder, for the
benchmarks that run attnprobe and transformers on the same model.

    python3 bench/hf_random_gpt2.py DIR
"""
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel

torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config()).save_pretrained(sys.argv[1], safe_serialization=True)
