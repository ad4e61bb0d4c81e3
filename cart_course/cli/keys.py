"""``cart-course keys``: the service's signing key (Ed25519), kept outside the database."""

from __future__ import annotations

from pathlib import Path

import click

from ..keys import DEFAULT_KEY_NAME, KeyFormatError, generate, write_key_pair


@click.group()
def keys() -> None:
    """The signing key of checkpoints and e-signatures (see docs/audit.md)."""


@keys.command("generate")
@click.option("--out", "out", required=True, metavar="DIR", help="Directory to write the pair to.")
@click.option(
    "--name",
    default=DEFAULT_KEY_NAME,
    show_default=True,
    help="The key's name (signature lines name it; give each key of a rotation its own).",
)
def generate_cmd(out: str, name: str) -> None:
    """Write an Ed25519 key pair: DIR/NAME.key (private, mode 0600: the service's
    CART_COURSE_SIGNING_KEY) and DIR/NAME.pub (public: give it to the auditors)."""
    try:
        key = generate(name)
        private, public = write_key_pair(key, Path(out))
    except KeyFormatError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    except (FileExistsError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--out") from None
    click.echo(f"private key: {private}  (set CART_COURSE_SIGNING_KEY={private})")
    click.echo(f"public key:  {public}  (auditors keep it)")
    click.echo(f"key id: {key.name} {key.id.hex()}")


def register(cli: click.Group) -> None:
    cli.add_command(keys)
