"""What a chain can be: ``qmri chains`` (the shipped ones), ``qmri check-chain`` (one file), ``qmri gadgets``."""

import argparse
from pathlib import Path

from gadgets.cli.arguments import Subcommands, add_command
from gadgets.runtime.chain import Chain, ChainError, load_chain, shipped_chains


def add_commands(commands: Subcommands) -> None:
    """Add ``chains``, ``check-chain`` and ``gadgets``."""
    add_command(commands, "chains", "list the shipped chains", lambda p: p.set_defaults(run=_chains))
    add_command(commands, "check-chain", "validate a chain XML file", _check_chain_arguments)
    add_command(
        commands,
        "gadgets",
        "list the gadgets a chain can use, with their properties",
        lambda p: p.set_defaults(run=_gadgets),
    )


def _chains(_: argparse.Namespace) -> int:
    for name, path in shipped_chains().items():
        try:
            description = load_chain(path).description
        except ChainError as exc:
            description = f"INVALID: {exc}"
        print(f"{name:28s} {description}")
    return 0


def _check_chain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="our chain, or a Gadgetron stream configuration running ours")
    p.set_defaults(run=_check_chain)


def _check_chain(args: argparse.Namespace) -> int:
    from gadgets.gadgetron_config import is_gadgetron_config, parse_gadgetron_config

    try:
        text = args.file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ChainError(f"{args.file}: cannot read chain: {exc}") from exc
    if not is_gadgetron_config(text):
        chain = load_chain(args.file)
        print(f"{args.file}: valid chain '{chain.name}' with {len(chain.stages)} gadgets")
        _print_stages(chain, indent="  ")
        return 0
    config = parse_gadgetron_config(text, source=str(args.file))
    print(f"{args.file}: valid Gadgetron stream configuration with {len(config.stages)} elements")
    for stage in config.stages:
        kind = "our chain" if stage.chain is not None else "Gadgetron"
        print(f"  {stage.name} ({stage.classname}, {kind})")
        if stage.chain is not None:
            _print_stages(stage.chain, indent="    ")
    return 0


def _print_stages(chain: Chain, *, indent: str) -> None:
    for stage in chain.stages:
        settings = ", ".join(f"{k}={v}" for k, v in stage.properties.items())
        print(f"{indent}{stage.name} ({stage.spec.classname}) {settings}")


def _gadgets(_: argparse.Namespace) -> int:
    from gadgets.runtime.registry import registered_gadgets

    for name, spec in sorted(registered_gadgets().items()):
        print(f"{name}: {spec.summary}")
        takes = ", ".join(kind.__name__ for kind in spec.consumes) or "nothing (everything passes)"
        sends = ", ".join(kind.__name__ for kind in spec.produces) or "what it takes"
        print(f"    takes {takes}; sends {sends}; passes on everything else")
        for doc in spec.config.describe():
            site = ", site setting" if doc.site else ""
            print(f"    {doc.name} ({doc.type_name}, default {doc.default}{site}): {doc.doc}")
    print("Site settings come from chain files on the server (shipped, --site-chains), never from a client's text.")
    return 0
