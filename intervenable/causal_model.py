"""``CausalModel``: a small deterministic causal graph that generates counterfactual data.

A high-level model of a task (variables, their values, parents and functions)
is run forward, intervened on, and used to label interchange interventions:
``run_interchange(base, {"WX": source})`` sets ``WX`` to its value on
``source`` and recomputes everything downstream. The dataset helpers produce
the batches that ``training.train_alignment`` and IIT loops consume:
``input_ids`` (base), ``source_input_ids`` (``[n_sources, ...]`` per example),
``labels`` (counterfactual output), ``base_labels`` and ``intervention_id``.

Randomness comes from ``rng`` (a ``random.Random``; pass ``seed=`` to the
constructor) so datasets are reproducible.
"""
from __future__ import annotations

import copy
import itertools
import random
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .errors import ConfigError

Setting = Dict[str, Any]


class CausalModel:
    """Variables, values, parents and functions of a deterministic causal graph.

    ``functions[v]`` takes the parents' values in ``parents[v]`` order; input
    variables (no parents) have zero-argument functions giving a default.
    """

    def __init__(
        self,
        variables: List[str],
        values: Dict[str, Sequence[Any]],
        parents: Dict[str, List[str]],
        functions: Dict[str, Callable[..., Any]],
        timesteps: Optional[Dict[str, int]] = None,
        equiv_classes: Optional[Dict[str, Any]] = None,
        pos: Optional[Dict[str, Any]] = None,
        seed: Optional[int] = None,
    ) -> None:
        self.rng = random.Random(seed) if seed is not None else random
        self.variables = sorted(variables)
        self.values = values
        self.parents = parents
        self.functions = functions
        for var in self.variables:
            for table, name in ((parents, "parents"), (values, "values"), (functions, "functions")):
                if var not in table:
                    raise ConfigError(f"Variable {var!r} has no entry in {name}; give one for every variable.")
        self.children: Dict[str, List[str]] = {var: [] for var in self.variables}
        for var in self.variables:
            for parent in parents[var]:
                if parent not in self.children:
                    raise ConfigError(f"{var!r} lists an unknown parent {parent!r}; add it to variables.")
                self.children[parent].append(var)
        self.inputs = [v for v in self.variables if not parents[v]]
        self.outputs = [v for v in self.variables if not self.children[v]]
        if timesteps is None:
            timesteps, self.end_time = self.generate_timesteps()
            for out in self.outputs:
                timesteps[out] = self.end_time
        for var in self.variables:
            for parent in parents[var]:
                if timesteps[parent] >= timesteps[var]:
                    raise ConfigError(f"Timestep of parent {parent!r} must precede that of {var!r}.")
        self.timesteps = timesteps
        self.variables.sort(key=lambda v: self.timesteps[v])
        self.pos = dict(pos) if pos else {}
        self.equiv_classes: Dict[str, Any] = dict(equiv_classes) if equiv_classes else {}
        self.run_forward()

    # -- structure -----------------------------------------------------------------
    def generate_timesteps(self):
        """Longest-path depth of every variable from the inputs, and the final depth."""
        depth: Dict[str, int] = {}

        def visit(var: str) -> int:
            if var not in depth:
                depth[var] = 0 if not self.parents[var] else 1 + max(visit(p) for p in self.parents[var])
            return depth[var]

        for var in self.variables:
            visit(var)
        return depth, max(depth.values())

    def generate_equiv_classes(self) -> None:
        """For each non-input variable: value -> list of parent settings producing it."""
        for var in self.variables:
            if var in self.inputs or var in self.equiv_classes:
                continue
            classes: Dict[Any, List[Setting]] = {val: [] for val in self.values[var]}
            for parent_values in itertools.product(*[self.values[p] for p in self.parents[var]]):
                value = self.functions[var](*parent_values)
                classes.setdefault(value, []).append(dict(zip(self.parents[var], parent_values)))
            self.equiv_classes[var] = classes

    def add_variable(self, variable: str, values: Sequence[Any], parents: List[str], children: List[str],
                     function: Callable[..., Any], timestep: Optional[int] = None) -> None:
        """Add a variable (e.g. a marginalised one); parents and children must exist."""
        for other in list(parents) + list(children):
            if other not in self.variables:
                raise ConfigError(f"{other!r} is not a variable of this model; add it first.")
        self.variables.append(variable)
        self.parents[variable] = list(parents)
        self.children[variable] = list(children)
        self.values[variable] = values
        self.functions[variable] = function
        if timestep is not None:
            self.timesteps[variable] = timestep

    # -- running -------------------------------------------------------------------
    def run_forward(self, intervention: Optional[Setting] = None) -> Setting:
        """Values of every variable; variables in ``intervention`` are fixed to the given values."""
        setting: Setting = {}
        for var in self.variables:  # sorted by timestep, so parents come first
            if intervention is not None and var in intervention:
                setting[var] = intervention[var]
            else:
                setting[var] = self.functions[var](*[setting[p] for p in self.parents[var]])
        return setting

    def run_interchange(self, input: Setting, source_interventions: Dict[str, Setting]) -> Setting:
        """Run ``input`` with each variable ``v`` set to its value on ``source_interventions[v]``."""
        setting = copy.copy(input)
        for var, source in source_interventions.items():
            setting[var] = self.run_forward(source)[var]
        return self.run_forward(setting)

    def find_live_paths(self, intervention: Setting) -> Dict[int, List[List[str]]]:
        """Causal paths (by length) along which changing a variable changes its child."""
        actual = self.run_forward(intervention)
        paths = {1: [[v] for v in self.variables]}
        step = 2
        while True:
            paths[step] = []
            for path in paths[step - 1]:
                for child in self.children[path[-1]]:
                    for value in self.values[path[-1]]:
                        changed = dict(intervention, **{path[-1]: value})
                        if self.run_forward(changed)[child] != actual[child]:
                            paths[step].append(path + [child])
                            break
            if not paths[step]:
                break
            step += 1
        del paths[1]
        return paths

    # -- sampling ------------------------------------------------------------------
    def sample_intervention(self, mandatory: Any = None) -> Setting:
        """A random non-empty setting of intermediate (neither input nor output) variables."""
        middle = [v for v in self.variables if v not in self.inputs and v not in self.outputs]
        if not middle:
            raise ConfigError("This causal model has no intermediate variables to intervene on.")
        intervention: Setting = {}
        while not intervention:
            for var in middle:
                if self.rng.choice([0, 1]) == 0:
                    intervention[var] = self.rng.choice(list(self.values[var]))
        return intervention

    def sample_input(self, mandatory: Optional[Callable[[Setting], bool]] = None,
                     output_var: Optional[str] = None, output_var_value: Any = None) -> Setting:
        """Random inputs, resampled until ``mandatory(total_setting)`` holds and, if given,
        ``output_var`` takes ``output_var_value``."""
        for _ in range(100000):
            setting = {var: self.rng.choice(list(self.values[var])) for var in self.inputs}
            total = self.run_forward(setting)
            if mandatory is not None and not mandatory(total):
                continue
            if output_var is not None and total[output_var] != output_var_value:
                continue
            return setting
        raise ConfigError("sample_input found no input meeting the constraints in 100000 draws.")

    def sample_input_tree_balanced(self, output_var: Optional[str] = None, output_var_value: Any = None) -> Setting:
        """Inputs sampled top-down so that every value of every variable on the way is equally likely."""
        if output_var is None:
            if len(self.outputs) != 1:
                raise ConfigError("Give output_var: this causal model has several outputs.")
            output_var = self.outputs[0]
        self.generate_equiv_classes()
        if output_var_value is None:
            output_var_value = self.rng.choice(list(self.values[output_var]))
        setting: Setting = {}

        def fill(var: str, value: Any) -> None:
            if var in self.inputs:
                setting[var] = value
                return
            options = self.equiv_classes[var].get(value) or []
            if not options:
                raise ConfigError(f"No parent setting gives {var}={value!r}.")
            for parent, parent_value in self.rng.choice(options).items():
                fill(parent, parent_value)

        fill(output_var, output_var_value)
        for var in self.inputs:
            if var not in setting:
                setting[var] = self.rng.choice(list(self.values[var]))
        return setting

    # -- filters -------------------------------------------------------------------
    def get_partial_filter(self, partial_setting: Setting) -> Callable[[Setting], bool]:
        return lambda total: all(total[v] == partial_setting[v] for v in partial_setting)

    def get_path_maxlen_filter(self, lengths: Sequence[int]) -> Callable[[Setting], bool]:
        def check(total: Setting) -> bool:
            paths = self.find_live_paths({v: total[v] for v in self.inputs})
            return max([k for k in paths if paths[k]], default=1) in lengths
        return check

    def get_specific_path_filter(self, start: str, end: str) -> Callable[[Setting], bool]:
        def check(total: Setting) -> bool:
            paths = self.find_live_paths({v: total[v] for v in self.inputs})
            return any(p[0] == start and p[-1] == end for k in paths for p in paths[k])
        return check

    # -- tensors and datasets ------------------------------------------------------
    def input_to_tensor(self, setting: Setting) -> torch.Tensor:
        """Concatenation of the input variables' values (in sorted order) as floats."""
        return torch.cat([torch.as_tensor(setting[v], dtype=torch.float32).reshape(-1) for v in self.inputs])

    def output_to_tensor(self, setting: Setting) -> torch.Tensor:
        return torch.cat([torch.as_tensor(float(setting[v])).reshape(-1) for v in self.outputs])

    def generate_factual_dataset(self, size: int, sampler: Optional[Callable[..., Setting]] = None,
                                 filter: Optional[Callable[[Setting], bool]] = None, device: Any = "cpu",
                                 input_function: Optional[Callable] = None, output_function: Optional[Callable] = None,
                                 return_tensors: bool = True) -> List[Dict[str, Any]]:
        """``size`` examples ``{"input_ids", "labels"}`` of the model run forward."""
        sampler = sampler or self.sample_input
        input_function = input_function or self.input_to_tensor
        output_function = output_function or self.output_to_tensor
        examples: List[Dict[str, Any]] = []
        while len(examples) < size:
            setting = sampler()
            if filter is not None and not filter(setting):
                continue
            output = self.run_forward(setting)
            if return_tensors:
                examples.append({"input_ids": input_function(setting).to(device),
                                 "labels": output_function(output).to(device)})
            else:
                examples.append({"input_ids": setting, "labels": output})
        return examples

    def generate_counterfactual_dataset(self, size: int, intervention_id: Callable[[Setting], int], batch_size: int,
                                        sampler: Optional[Callable[..., Setting]] = None,
                                        intervention_sampler: Optional[Callable[[], Setting]] = None,
                                        filter: Optional[Callable[[Setting], bool]] = None, device: Any = "cpu",
                                        input_function: Optional[Callable] = None,
                                        output_function: Optional[Callable] = None,
                                        return_tensors: bool = True) -> List[Dict[str, Any]]:
        """Interchange examples: for each sampled intervention ``{var: value}``, ``batch_size``
        bases, each with one source per intervened variable (sampled so that ``var`` takes
        ``value``; in timestep order, zero-padded to the number of intermediate variables).
        ``labels`` is the output of ``run_interchange(base, sources)``."""
        sampler = sampler or self.sample_input
        intervention_sampler = intervention_sampler or self.sample_intervention
        input_function = input_function or self.input_to_tensor
        output_function = output_function or self.output_to_tensor
        n_middle = len([v for v in self.variables if v not in self.inputs and v not in self.outputs])
        examples: List[Dict[str, Any]] = []
        while len(examples) < size:
            intervention = intervention_sampler()
            if filter is not None and not filter(intervention):
                continue
            for _ in range(batch_size):
                base = sampler()
                source_dic = {var: sampler(output_var=var, output_var_value=intervention[var])
                              for var in self.variables if var in intervention}
                sources: List[Any] = list(source_dic.values())
                counterfactual = self.run_interchange(base, source_dic)
                if return_tensors:
                    tensors = [input_function(s) for s in sources]
                    tensors += [torch.zeros_like(input_function(base)) for _ in range(n_middle - len(tensors))]
                    examples.append({
                        "input_ids": input_function(base).to(device),
                        "source_input_ids": torch.stack(tensors).to(device),
                        "labels": output_function(counterfactual).to(device),
                        "base_labels": output_function(self.run_forward(base)).to(device),
                        "intervention_id": torch.tensor([intervention_id(intervention)]).to(device),
                    })
                else:
                    examples.append({
                        "input_ids": base, "source_input_ids": sources + [{}] * (n_middle - len(sources)),
                        "labels": counterfactual, "base_labels": self.run_forward(base),
                        "intervention_id": [intervention_id(intervention)],
                    })
        return examples

    # -- display -------------------------------------------------------------------
    def print_structure(self, pos: Any = None, font: int = 12, node_size: int = 1000) -> None:
        """Print each variable with its parents (text; no plotting dependency)."""
        for var in self.variables:
            print(f"{var} <- {', '.join(self.parents[var]) or '(input)'}  [t={self.timesteps[var]}]")

    def print_setting(self, total_setting: Setting, font: int = 12, node_size: int = 1000) -> None:
        for var in self.variables:
            print(f"{var} = {total_setting[var]!r}")


def hierarchical_equality_model(embedding_dim: int = 4, n_entities: int = 20, seed: int = 0) -> CausalModel:
    """The hierarchical equality task of the DAS tutorials: ``O = (W == X) == (Y == Z)``.

    Inputs ``W, X, Y, Z`` are entities (random vectors in [-1, 1]^embedding_dim,
    stored as tuples); ``WX = W == X`` and ``YZ = Y == Z`` are the intermediate variables.
    """
    gen = torch.Generator().manual_seed(seed)
    reps = [tuple((torch.rand(embedding_dim, generator=gen) * 2 - 1).tolist()) for _ in range(n_entities)]
    variables = ["W", "X", "Y", "Z", "WX", "YZ", "O"]
    values: Dict[str, Sequence[Any]] = {v: reps for v in ("W", "X", "Y", "Z")}
    values.update({"WX": [True, False], "YZ": [True, False], "O": [True, False]})
    parents = {"W": [], "X": [], "Y": [], "Z": [], "WX": ["W", "X"], "YZ": ["Y", "Z"], "O": ["WX", "YZ"]}
    functions = {
        "W": lambda: reps[0], "X": lambda: reps[0], "Y": lambda: reps[1], "Z": lambda: reps[1],
        "WX": lambda x, y: x == y, "YZ": lambda x, y: x == y, "O": lambda x, y: x == y,
    }
    return CausalModel(variables, values, parents, functions, seed=seed)
