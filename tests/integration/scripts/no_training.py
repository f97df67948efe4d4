"""Imports torch and computes, but never trains: gpuwatch must leave it alone."""

import torch

print(float(torch.ones(3).sum()))
