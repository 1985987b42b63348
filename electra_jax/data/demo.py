"""A small built-in pretraining corpus made from text shipped with Python.

`write_demo_corpus(path)` lets `train` run out of the box on any machine,
offline: it gathers English prose that every CPython installation carries --
the interactive help topics (`pydoc_data.topics`, the language reference
sections that `help('if')` shows), the docstrings of the standard library's
modules, classes and functions (read from the .py sources with `ast`, nothing
is imported) and Python's LICENSE.txt -- and writes it in the pretraining text
format: one paragraph per line, a blank line between documents.

It is about 2 MB (a few thousand documents) on CPython 3.11: enough to watch the
losses fall and to exercise every part of the pipeline, far too little to
pretrain a useful model.  The output is deterministic for a given Python
installation (files and topics are visited in sorted order); another Python
version ships other text and gives another corpus.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import sysconfig
import uuid

# Bump when the extraction changes, so caches keyed on it are rebuilt.
DEMO_CORPUS_VERSION = 1

# Standard-library directories that hold tests, vendored or generated code.
_SKIP_DIRS = frozenset({
    '__pycache__', 'site-packages', 'dist-packages', 'test', 'tests',
    'idle_test', 'lib2to3', 'ensurepip', 'turtledemo', 'pydoc_data',
    'config-3', 'encodings',
})

_WORD = re.compile(r'[A-Za-z]{2,}')
_SPACE = re.compile(r'\s+')


def _paragraphs(text: str) -> list[str]:
  """Splits text on blank lines into one-line paragraphs of mostly prose.

  Interactive examples (`>>>` / `...` lines) are dropped, and so are
  paragraphs with fewer than three words or that are mostly symbols (tables,
  grammar rules, code).
  """
  out = []
  for block in re.split(r'\n\s*\n', text):
    lines = [l.strip() for l in block.splitlines()]
    lines = [l for l in lines if l and not l.startswith(('>>>', '...'))]
    para = _SPACE.sub(' ', ' '.join(lines)).strip()
    if not para:
      continue
    words = _WORD.findall(para)
    if len(words) < 3 or sum(map(len, words)) < 0.5 * len(para):
      continue
    out.append(para)
  return out


def _topic_documents() -> list[list[str]]:
  """The interactive help topics, one document per topic."""
  try:
    from pydoc_data.topics import topics  # pylint: disable=g-import-not-at-top
  except ImportError:  # Some distributions strip pydoc_data.
    return []
  return [p for p in (_paragraphs(topics[k]) for k in sorted(topics)) if p]


def _docstrings(tree: ast.Module) -> list[str]:
  """Docstrings of a module and its classes and functions, in source order.

  Only statement bodies are visited (not expressions), which is all a
  docstring can hide in and much faster than `ast.walk`.
  """
  defs = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
  found = []

  def visit(node):
    if isinstance(node, defs):
      doc = ast.get_docstring(node)
      if doc:
        found.append(doc)
    for field in ('body', 'orelse', 'finalbody', 'handlers'):
      for child in getattr(node, field, ()):
        if isinstance(child, (ast.stmt, ast.excepthandler)):
          visit(child)

  visit(tree)
  return found


def _stdlib_files(stdlib: str) -> list[str]:
  files = []
  for root, dirs, names in os.walk(stdlib):
    dirs[:] = sorted(d for d in dirs
                     if d not in _SKIP_DIRS and not d.startswith(
                         ('config-', 'site-packages', '.')))
    files.extend(os.path.join(root, n) for n in sorted(names)
                 if n.endswith('.py') and not n.startswith('test_'))
  return files


def _docstring_documents(stdlib: str) -> list[list[str]]:
  """One document per standard-library module: its docstrings' paragraphs."""
  docs = []
  for path in _stdlib_files(stdlib):
    try:
      with open(path, 'rb') as f:
        tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, ValueError, OSError):
      continue
    paras = [p for doc in _docstrings(tree) for p in _paragraphs(doc)]
    if paras:
      docs.append(paras)
  return docs


def _license_documents(stdlib: str) -> list[list[str]]:
  path = os.path.join(stdlib, 'LICENSE.txt')
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      paras = _paragraphs(f.read())
  except OSError:
    return []
  return [paras] if paras else []


def demo_documents() -> list[list[str]]:
  """The demo corpus as documents, each a list of one-line paragraphs."""
  stdlib = sysconfig.get_paths()['stdlib']
  return (_topic_documents() + _docstring_documents(stdlib) +
          _license_documents(stdlib))


def demo_corpus_tag() -> str:
  """A short tag naming the corpus this Python produces (for cache keys)."""
  v = sys.version_info
  return (f'v{DEMO_CORPUS_VERSION}-{sys.implementation.name}'
          f'{v.major}.{v.minor}.{v.micro}')


def write_demo_corpus(path: str) -> str:
  """Writes the demo corpus to `path` (atomically) and returns `path`.

  Format: one paragraph per line, a blank line between documents, UTF-8.
  The parent directory is created if needed.

  Args:
    path: the text file to write.

  Returns:
    `path`.

  Raises:
    RuntimeError: this Python installation ships no usable text (neither
      pydoc_data nor standard-library sources).
  """
  docs = demo_documents()
  if not docs:
    raise RuntimeError(
        'this Python installation ships neither pydoc_data nor standard-'
        'library sources, so there is no built-in demo corpus; pass real '
        "text with --config.data.text='path/*.txt'")
  text = '\n\n'.join('\n'.join(paras) for paras in docs) + '\n'
  path = os.fspath(path)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent,
                     f'.{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}')
  try:
    with open(tmp, 'w', encoding='utf-8', newline='\n') as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path
