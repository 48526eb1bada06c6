"""``python3 -m modelmanager.simulator --port 11434``: run the Ollama simulator."""

import sys

from .cli import main

sys.exit(main())
