"""Make a CURVE key pair for ZeroMQ: NAME.key (public) and NAME.key_secret (private, mode 0600).

  zcmd keygen keys --name server     the server's pair: set zmq.curve_secret_key: keys/server.key_secret
  zcmd keygen keys --name app1       a client's pair: copy keys/app1.key into the directory named by
                                     zmq.curve_authorized_keys; the client uses app1.key_secret
                                     and server.key (zsend --server-key/--client-key)

An existing pair is never overwritten.
"""
import os
import re
import sys

import zmq.auth


def add_arguments(parser):
    parser.add_argument("directory", nargs="?", default="keys", help="where to write the files (default ./keys)")
    parser.add_argument("--name", default="server", help="the files' name (default: server)")


def run(args, config):
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name) or args.name.startswith("."):
        print(f"zcmd keygen: bad name {args.name!r}: use letters, digits, '_', '-', '.'", file=sys.stderr)
        return 2
    public_path = os.path.join(args.directory, f"{args.name}.key")
    secret_path = public_path + "_secret"
    for path in (public_path, secret_path):
        if os.path.exists(path):
            print(f"zcmd keygen: {path} exists; not overwriting a key (remove it first, or pick "
                  f"another --name)", file=sys.stderr)
            return 1
    try:
        os.makedirs(args.directory, mode=0o700, exist_ok=True)
        old_umask = os.umask(0o077)  # the secret file is private from its first byte
        try:
            zmq.auth.create_certificates(args.directory, args.name)
        finally:
            os.umask(old_umask)
        os.chmod(public_path, 0o644)  # the public half is meant to be shared
    except OSError as e:
        print(f"zcmd keygen: cannot write keys in {args.directory}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"public key  {public_path}\nsecret key  {secret_path} (keep it private)")
    return 0
