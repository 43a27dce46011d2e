"""``python -m ml.serve``: the inference API under uvicorn, with the limits of its settings (``ml.serve.server``)."""

from ml.serve.server import main

if __name__ == "__main__":  # not in a worker process, which imports this module again under another name
    main()
