"""The bundled demo: a small model trained by the project itself on text with known structure.

`corpus` writes the seeded training text and the held-out evaluation prompts, `model_training`
trains the byte-level BPE tokenizer and the Llama-shaped model, `evaluate` measures held-out
accuracy per behaviour, and `build` runs the whole pipeline into `resources/demo/`:

    python -m circuit_studio.demo.build --out resources/demo          # full build (developer machine)
    python -m circuit_studio.demo.build --out /tmp/demo_smoke --smoke  # CI-sized smoke run
"""
