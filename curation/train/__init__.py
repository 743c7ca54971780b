"""Training: fine-tune a small model on a run's curated split with TRL's SFTTrainer and (Q)LoRA.

    config.py      TrainConfig, the recipe's `train:` section (pydantic only; no torch), and TrainError
    splits.py      the splits `--split` can name (no pydantic: the command's parser reads them)
    target.py      what to train on: the recipe and dataset behind `curate train TARGET`, and the split's rows
    base_model.py  the frozen base: checkpoint (a GGUF converted once), quantisation, tokenizer, device; loading an adapter back
    sft.py         TRL's SFTConfig and peft's LoraConfig from TrainConfig, the thinking in the loss, the trainer
    card.py        what an adapter folder holds besides the weights: metadata, recipe, model card; the push
    main.py        train(): the steps above in order, as TRL's scripts/sft.py runs them
"""
