"""LoRA fine-tuning machinery and model loading."""
