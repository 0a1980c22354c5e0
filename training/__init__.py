"""maskkit.training: IResNet backbones, MaskDUL two-stream model, losses, training loop, evaluation."""
