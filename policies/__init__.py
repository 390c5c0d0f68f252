"""The broker's Rego policies and policy data, shipped as package data."""

from pathlib import Path

POLICY_DIR = Path(__file__).resolve().parent
