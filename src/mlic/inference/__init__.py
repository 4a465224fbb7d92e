"""A trained model at work: predictors, input discovery, export, batch and sharded prediction, serving."""
