"""Training stage: the LightningModule and loss, model loading and quantisation, distributed, checkpoints, GGUF; entry :mod:`em.train.run`."""
