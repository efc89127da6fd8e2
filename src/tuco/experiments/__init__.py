"""The TuCo paper's experiments (Nuti et al., ICML 2025) and steering, one module each, run by
``tuco experiment``.

- ``registry``: the paper's nine model pairs; ``sources``, ``translations``, ``prompts``: their data
  (hub or local files) and the offline stand-ins; ``gcg``: cached GCG strings (nanogcg);
- ``alpha_sweep`` (E1), ``web_vs_chat`` (E2), ``jailbreaks`` (E3), ``jailbreak_success`` (E4),
  ``tuco_vs_outputco`` (E5), ``steering``: the pipelines, each writing results.jsonl, table.md, PNGs;
- ``common``: resumable steps and output directories; ``stats``: CV alpha*, ROC-AUC, TPR@FPR, the
  success rule; ``cli``: the ``tuco experiment`` subcommand.
"""
