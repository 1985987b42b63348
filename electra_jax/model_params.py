"""Parameter-tree utilities for ELECTRA params: counting, the GDES embedding fold,
taking the fine-tuning encoder out of a pretraining tree, and converting between the
scanned and unrolled encoder layouts.

Pure pytree code (no Flax modules); `electra_jax.model` re-exports every public name.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def _unwrap(tree: Mapping[str, Any]) -> Mapping[str, Any]:
  """Accepts either a variables dict {'params': ...} or the params tree itself."""
  if isinstance(tree, Mapping) and set(tree.keys()) == {'params'}:
    return tree['params']
  return tree


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree)))


def discriminator_param_count(params: Mapping[str, Any]) -> int:
  """Parameters of the discriminator (main model): 'embeddings' + 'discriminator'.

  Its heads are included (RTD, copy or MLM head, whichever the objective has).  With
  embedding_sharing='gdes' the discriminator's block is embeddings + embeddings_delta
  folded into one block of the same size, so the delta is not counted twice.
  """
  params = _unwrap(params)
  return count_params(params['embeddings']) + count_params(params['discriminator'])


def fold_embeddings_delta(shared: Mapping[str, Any], delta: Mapping[str, Any]) -> Any:
  """The discriminator's GDES embedding block: shared + delta, leaf by leaf.

  Works on jax or numpy trees; in the model the shared leaves are stop_gradient'ed first.
  """
  return jax.tree_util.tree_map(lambda s, d: s + d, shared, delta)


# The discriminator's heads: pretraining-only, dropped for fine-tuning.
_DISCRIMINATOR_HEADS = ('discriminator_predictions', 'mlm_predictions', 'mlm_output_bias')


def encoder_params_from_pretraining(params: Mapping[str, Any]) -> dict[str, Any]:
  """The ElectraEncoder params inside a pretraining params tree.

  Drops every head of the discriminator and folds a gdes 'embeddings_delta' into
  'embeddings' (shared + delta, a new array); otherwise no array is copied.  `params`
  may be a full pretraining tree or the part `encoder_restore_target` describes.
  """
  params = _unwrap(params)
  disc = {k: v for k, v in params['discriminator'].items()
          if k not in _DISCRIMINATOR_HEADS}
  embeddings = params['embeddings']
  if 'embeddings_delta' in params:
    embeddings = fold_embeddings_delta(embeddings, params['embeddings_delta'])
  return {'embeddings': embeddings, 'discriminator': disc}


def unstack_layer_params(encoder_params: Mapping[str, Any]) -> dict[str, Any]:
  """encoder/{layer: stacked [L, ...]} -> encoder/{layer_0, ..., layer_{L-1}}."""
  stacked = encoder_params['layer']
  num = jax.tree_util.tree_leaves(stacked)[0].shape[0]
  return {f'layer_{i}': jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
          for i in range(num)}


def stack_layer_params(encoder_params: Mapping[str, Any]) -> dict[str, Any]:
  """encoder/{layer_0, ..., layer_{L-1}} -> encoder/{layer: stacked [L, ...]}."""
  num = len(encoder_params)
  layers = [encoder_params[f'layer_{i}'] for i in range(num)]
  return {'layer': jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)}
