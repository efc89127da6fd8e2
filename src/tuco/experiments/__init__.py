"""The paper's experiments (TUCO-SPEC section 6): the model-pair registry, prompt builders and the
statistics they report. Pipelines that run them end to end build on these pieces."""
