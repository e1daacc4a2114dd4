"""Data the project does not ship, through the README's own-data command at its defaults, against the known optimum.

    python benchmarks/own_data.py OUT [--only NAME ...]

Makes three data sets in odd units (pPCA with columns on different scales, a Gaussian mixture in raw units, a heavy-tailed
Student-t), trains each model the README offers for own data on them with
``train.py fit --config configs/numpy_{file,ppca,mixture}.yaml --data.path FILE.npy``, evaluates the checkpoint with
``lvm-evaluate`` (importance sampling at K = 1000 and AIS), and compares the held-out log p(x) with the optimum fitted to the
same training split: scikit-learn's EM for the mixture, the closed-form pPCA maximum-likelihood solution for the linear-Gaussian
model, the true density for the Student-t. Prints one row per run and writes OUT/own_data.json.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvm_lightning.data import NumpyData  # noqa: E402

# The README's own-data configs, with the one number each needs from the user where the data set knows it.
MODELS = {
    "VAE": ("numpy_file.yaml", []),
    "VAE, 4 latents": ("numpy_file.yaml", ["--model.lvm.latent_dim", "4"]),
    "LinearGaussian": ("numpy_ppca.yaml", ["--model.lvm.latent_dim", "4"]),
    "MixtureModel": ("numpy_mixture.yaml", ["--model.lvm.num_components", "6"]),
}

# AIS moves a continuous z: the mixture's enumerable z has the exact estimator instead.
ESTIMATORS = {name: ["exact", "importance_sampling"] if name == "MixtureModel" else ["importance_sampling", "ais"] for name in MODELS}
ESTIMATORS["LinearGaussian"] = ["exact", "importance_sampling", "ais"]


def make_data(folder: Path) -> dict[str, dict]:
    """The three data sets, seeded, and the facts their references need."""
    rng = np.random.default_rng(123)
    n, dim, factors = 5000, 12, 4
    x = rng.normal(size=(n, factors)) @ rng.normal(size=(dim, factors)).T + 0.5 * rng.normal(size=(n, dim))
    x = (x - x.mean(0)) / x.std(0) * rng.uniform(1.4, 6, size=dim) + rng.uniform(-3.5, 3.5, size=dim)
    np.save(folder / "ppca.npy", x.astype(np.float32))
    k = 6
    centres, labels = rng.uniform(-4, 4, size=(k, 2)), rng.integers(0, k, size=4000)
    points = centres[labels] + rng.normal(size=(4000, 2)) * rng.uniform(0.2, 0.8, size=(k, 2))[labels]
    np.save(folder / "mixture_raw.npy", np.stack([points[:, 0] * 100 + 1000, points[:, 1] * 0.01 - 5], 1).astype(np.float32))
    dim_t, df = 5, 3.0
    a = rng.normal(size=(dim_t, dim_t))
    covariance = a @ a.T / dim_t + 0.2 * np.eye(dim_t)
    t = rng.multivariate_normal(np.zeros(dim_t), covariance, size=6000) / np.sqrt(rng.chisquare(df, size=(6000, 1)) / df)
    scale, shift = np.array([0.001, 1, 50, 3, 1e4]), np.array([5, -2, 100, 0, -3e4])
    np.save(folder / "student_t.npy", (t * scale + shift).astype(np.float32))
    return {
        # Scaled per column after the isotropic noise, the data's noise is diagonal: pPCA is the optimum of the isotropic
        # LinearGaussian, factor analysis (diagonal noise) the optimum of any linear-Gaussian model, which a VAE may approach.
        "ppca": {
            "models": ["LinearGaussian", "VAE, 4 latents"],
            "reference": ("pPCA maximum likelihood", ppca_reference, factors),
            "also": ("factor analysis maximum likelihood", fa_reference, factors),
        },
        "mixture_raw": {"models": ["MixtureModel", "VAE"], "reference": ("EM, 6 diagonal components", em_reference, k)},
        "student_t": {"models": ["VAE"], "reference": ("the true density", student_t_truth(covariance, df, scale, shift), None)},
    }


def ppca_reference(train: np.ndarray, test: np.ndarray, factors: int) -> float:
    """Held-out mean log-density of the pPCA maximum-likelihood fit (Tipping & Bishop, 1999) to ``train``."""
    mean = train.mean(0)
    covariance = np.cov(train, rowvar=False, bias=True)
    values, vectors = np.linalg.eigh(covariance)
    values, vectors = values[::-1], vectors[:, ::-1]
    noise = values[factors:].mean()
    weight = vectors[:, :factors] * np.sqrt(np.maximum(values[:factors] - noise, 0))
    model = torch.distributions.MultivariateNormal(torch.tensor(mean), torch.tensor(weight @ weight.T + noise * np.eye(len(mean))))
    return float(model.log_prob(torch.tensor(test, dtype=torch.float64)).mean())


def fa_reference(train: np.ndarray, test: np.ndarray, factors: int) -> float:
    """Held-out mean log-density of scikit-learn's factor-analysis maximum-likelihood fit (diagonal noise) to ``train``."""
    from sklearn.decomposition import FactorAnalysis

    return float(FactorAnalysis(factors, random_state=0).fit(train).score(test))


def em_reference(train: np.ndarray, test: np.ndarray, components: int) -> float:
    """Held-out mean log-density of scikit-learn's EM fit (diagonal covariances, best of 5 starts) to ``train``, fitted in
    standard units (its variance floor, reg_covar, is absolute: in raw units it swamps a column of scale 0.01) and
    scored in the data's units, the map's log-Jacobian included."""
    from sklearn.mixture import GaussianMixture

    mean, std = train.mean(0), train.std(0)
    fit = GaussianMixture(components, covariance_type="diag", n_init=5, random_state=0).fit((train - mean) / std)
    return float(fit.score((test - mean) / std) - np.log(std).sum())


def student_t_truth(covariance: np.ndarray, df: float, scale: np.ndarray, shift: np.ndarray):
    """The data's own log-density: a multivariate Student-t, mapped by x = shift + scale ⊙ t."""

    def reference(train: np.ndarray, test: np.ndarray, _: None) -> float:
        from scipy.stats import multivariate_t

        standard = (test.astype(np.float64) - shift) / scale
        return float((multivariate_t(np.zeros(len(scale)), covariance, df=df).logpdf(standard) - np.log(np.abs(scale)).sum()).mean())

    return reference


def run(folder: Path, name: str, model: str, spec: dict) -> dict:
    """Trains ``model`` on data set ``name`` through train.py at the config's defaults, evaluates it, and compares with the reference."""
    data = folder / f"{name}.npy"
    run_name = f"{name}_{model}".replace(", ", "_").replace(" ", "_")
    started = time.time()
    config, options = MODELS[model]
    train = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / config), "--data.path", str(data),
         "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.name", run_name, *options],
        cwd=folder, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.time() - started
    if train.returncode != 0:
        return {"data": name, "model": model, "error": train.stderr[-2000:]}
    checkpoint = folder / "runs" / run_name / "version_0" / "checkpoints" / "last.ckpt"
    report = folder / f"{run_name}.json"
    evaluate = subprocess.run(
        [sys.executable, "-m", "lvm_lightning.evaluate", str(checkpoint), "--data_path", str(data), "--num_samples", "1000",
         "--estimators", *ESTIMATORS[model], "--gap_points", "0", "--output", str(report)],
        cwd=folder, capture_output=True, text=True,
    )  # fmt: skip
    if evaluate.returncode != 0:
        return {"data": name, "model": model, "error": evaluate.stderr[-2000:]}
    estimates = json.loads(report.read_text())["estimates"]
    splits = NumpyData(str(data))
    splits.setup()
    label, reference, argument = spec["reference"]
    arrays = splits.splits["train"].double().numpy(), splits.splits["test"].double().numpy()
    optimum = reference(*arrays, argument)
    best = max(entry["mean"] for entry in estimates.values())
    exact = estimates.get("exact", {}).get("mean")
    return {
        "data": name,
        "model": model,
        "test_log_px": best,
        "reference": label,
        "reference_log_px": optimum,
        "behind": optimum - best,
        **({"also": spec["also"][0], "also_log_px": spec["also"][1](*arrays, spec["also"][2])} if "also" in spec else {}),
        "ais": estimates.get("ais", {}).get("mean"),
        "ais_stderr": estimates.get("ais", {}).get("stderr"),
        "ais_minus_exact": None if exact is None or "ais" not in estimates else estimates["ais"]["mean"] - exact,
        "importance_sampling": estimates["importance_sampling"]["mean"],
        "worst_pareto_k": max(entry.get("pareto_k_max", entry.get("pareto_k", float("nan"))) for entry in estimates.values() if "pareto_k" in entry),
        "train_seconds": wall,
        "warnings": [line for line in evaluate.stderr.splitlines() if line.startswith("warning:")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", nargs="+", help="data sets to run (ppca, mixture_raw, student_t)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    specs = make_data(args.out)
    rows = []
    for name, spec in specs.items():
        if args.only and name not in args.only:
            continue
        for model in spec["models"]:
            row = run(args.out, name, model, spec)
            rows.append(row)
            if "error" in row:
                print(f"{name:12} {model:15} error: {row['error'].splitlines()[-1] if row['error'] else ''}", flush=True)
                continue
            ais = "-" if row["ais"] is None else f"{row['ais']:.3f} ± {row['ais_stderr']:.3f}"
            ais += "" if row["ais_minus_exact"] is None else f" ({row['ais_minus_exact']:+.3f} vs exact)"
            also = f"  {row['also']}: {row['also_log_px']:.4f}" if "also" in row else ""
            print(
                f"{name:12} {model:15} test {row['test_log_px']:.4f}  {row['reference']}: {row['reference_log_px']:.4f}  behind {row['behind']:+.4f}{also}"
                f"  AIS {ais}  worst k̂ {row['worst_pareto_k']:.2f}  {row['train_seconds']:.0f} s",
                flush=True,
            )
    (args.out / "own_data.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
