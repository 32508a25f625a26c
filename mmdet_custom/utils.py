"""Small helpers shared across the plugin."""


def error_summary(error: BaseException) -> str:
    """The first sentence (or line) of an exception's message, which names the failure (torch
    appends paragraphs of generic advice to some), or its type where it has no message."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return text.split('. ')[0].splitlines()[0]
