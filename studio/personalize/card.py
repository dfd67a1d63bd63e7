"""Model cards of personalization results: card.json (read back by the pickers and the CLI) and README.md."""
from __future__ import annotations

import json
from pathlib import Path

CARD_FILE = "card.json"


def read_card(folder: Path) -> dict:
    path = Path(folder) / CARD_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def write_card(folder: Path, card: dict) -> Path:
    """Write card.json and a README.md that says what the result is, how it was made and how to use it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    settings = "\n".join(f"| {k} | {v} |" for k, v in card.get("settings", {}).items())
    files = "\n".join(f"| `{name}` | {size / 1024:.1f} KiB |" for name, size in card.get("files", {}).items())
    token = card.get("token", "")
    use = {
        "lora": f'`<lora:{card["name"]}:1>` in a prompt, or pick it in the LoRA picker; `{token}` works in prompts '
                "with it (its embedding is in this folder).",
        "embedding": f"pick the embedding (or just write `{token}`: embeddings in models/embeddings are found by "
                     "their token).",
        "model": "pick it as the model; its tokenizer knows the token.",
    }[card["kind"]]
    text = f"""# {card['name']}: {card['method']} of `{token}` on {card['base_model']}

| | |
| --- | --- |
| base model | {card['base_model']} (hash {card.get('base_hash') or '-'}) |
| token | `{token}` ({card.get('vectors', 1)} vector(s)); class word: {card.get('class_word') or '-'} |
| method | {card['method']} |
| steps | {card['steps']} (batch {card['settings'].get('batch')}) |
| wall time | {card['wall_time_s']:.1f} s on {card.get('hardware', '?')} |
| final loss | {card['final_loss']:.4f} (mean of the last {card.get('loss_window', 1)} steps) |
| trainable parameters | {card['trainable_params']:,} |

Use: {use}

Command: `{card.get('command', '')}`

## Settings

| setting | value |
| --- | --- |
{settings}

## Files

| file | size |
| --- | --- |
{files}
"""
    for heading, body in card.get("sections", {}).items():
        text += f"\n## {heading}\n\n{body}\n"
    (folder / "README.md").write_text(text)
    return folder / CARD_FILE
