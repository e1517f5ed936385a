"""A child for tests/test_children.py: echoes each message, exits on "stop", crashes on "exit"."""
import os



from zspark import children


def main():
    link, config = children.attach()
    link.send({"kind": "hello", "pid": os.getpid(), "config": config})
    while True:
        header, blob = link.recv()
        if header["kind"] == "stop":
            return 0
        if header["kind"] == "exit":
            os._exit(header["code"])
        link.send(header, blob)


if __name__ == "__main__":
    raise SystemExit(main())
