"""real_only, Table 1's first row: a compatibility classifier on real seen features alone.

The paper's row and the reference's bilcomp.sh baseline score every class
from its embedding, so they recognise unseen classes they never saw. A
softmax classifier trained on seen classes cannot (its unseen logits are
never trained), so real_only uses `eval.real_only.classifier` whatever
`eval.classifier` the generator rows use.
"""

import dataclasses
import json
import os

import jax
import numpy as np

from gmn_jax import config as gmn_config
from gmn_jax import evaluate
from gmn_jax import specs
from gmn_jax import train
from experiments.configs import digits, sun


def _real_only(config, **overrides):
  config.method = "real_only"
  config.update_from_flattened_dict(overrides)
  return config


def test_real_only_takes_its_compatibility_classifier_and_inherits_unset_settings():
  sun_config = _real_only(sun.get_config())
  gmn_config.validate(sun_config, check_data_dir=False)
  spec = specs.eval_spec(sun_config)
  # The SUN preset's softmax settings (lr 1.0) are a softmax's: the preset
  # gives the compatibility model its own.
  assert spec.classifier == "bilinear"
  assert (spec.lr, spec.lr_decay, spec.weight_decay) == (
      sun_config.eval.real_only.lr, sun_config.eval.real_only.lr_decay,
      sun_config.eval.real_only.weight_decay)
  assert spec.lr != sun_config.eval.lr
  # Unset (None) settings are eval's; the generator rows keep eval's classifier.
  digits_config = _real_only(digits.get_config(), **{"eval.classifier": "softmax",
                                                      "eval.real_only.classifier": "devise"})
  spec = specs.eval_spec(digits_config)
  assert (spec.classifier, spec.lr, spec.weight_decay) == (
      "devise", digits_config.eval.lr, digits_config.eval.weight_decay)
  digits_config.method = "cwgan_gm"
  assert specs.eval_spec(digits_config).classifier == "softmax"


def test_real_only_recognises_unseen_classes_where_the_rows_use_a_softmax(tmp_path):
  config = _real_only(digits.get_config(), **{"eval.classifier": "softmax", "seeds": (1,),
                                              "eval.num_classifier_seeds": 2})
  summary = train.train_and_evaluate(config, str(tmp_path / "real_only"))
  dataset = train.load_dataset(config)
  chance = 100.0 / dataset.unseen_classes.size
  assert summary["metrics"]["zsl_t1"]["mean"] > chance + 10
  assert summary["metrics"]["gzsl_h"]["mean"] > 0
  assert summary["final_classifier"]["kind"] == "bilinear"
  assert summary["final_classifier"]["trained_on"].startswith("seen classes")
  with open(os.path.join(tmp_path, "real_only", "results.json")) as f:
    assert json.load(f)["final_classifier"] == summary["final_classifier"]
  # What the old behaviour trained: the rows' softmax on seen classes only
  # never predicts an unseen class (GZSL u = 0; its ZSL T1 reads untrained
  # columns). Same data, seeds and budget, so the gap is the classifier's.
  softmax = _real_only(digits.get_config(), **{
      "eval.classifier": "softmax", "eval.real_only.classifier": "bilinear", "seeds": (1,),
      "eval.num_classifier_seeds": 2})
  spec = dataclasses.replace(specs.eval_spec(softmax), classifier="softmax")
  (seen_only_softmax,) = evaluate.evaluate_generators(
      None, None, dataset, spec, [jax.random.key(0)])
  np.testing.assert_array_equal(seen_only_softmax.last["gzsl_u"], 0.0)
  assert summary["metrics"]["zsl_t1"]["mean"] > float(np.mean(seen_only_softmax.last["zsl_t1"]))
