"""Personalization: teach a model a new concept from a few images (LoRA, DreamBooth, textual inversion) and use
the results at once in every job. data (images and captions), tokens (new words and their embeddings), lora (peft
adapters, saving in diffusers' and kohya's formats), trainer (the loop), card (model cards), adapters (loading
LoRAs and embeddings into a pipeline for one job). The job itself is studio.jobs.train."""
