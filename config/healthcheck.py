"""Container health check: ask this host's server for /healthz; exit 0 if it answers 200.

    python -m config.healthcheck [--port 8000]

The request carries a Host header the server accepts (the first entry of
DJANGO_ALLOWED_HOSTS), so it works whatever hosts production allows, and
/healthz is exempt from the HTTPS redirect.
"""

import argparse
import os
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 2.0


def allowed_host() -> str:
    hosts = [host.strip() for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if host.strip()]
    return next((host.lstrip(".") for host in hosts if host != "*"), "localhost")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exit 0 if the local server's /healthz answers 200.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args(argv)
    request = urllib.request.Request(f"http://127.0.0.1:{args.port}/healthz", headers={"Host": allowed_host()})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 (fixed URL)
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
        error.close()
    except OSError as error:
        print(f"healthcheck: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"healthcheck: /healthz answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
