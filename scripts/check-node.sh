#!/bin/sh
# Fails early, with the fix, when `node` is too old for the test identity providers.
# oidc-provider and oauth2-mock-server need Node >= 20.19 (require() of ES modules), and
# Debian 12's own nodejs package is 18, which otherwise fails much later inside a fixture.
set -eu
need_major=20
need_minor=19
if ! found=$(node --version 2>/dev/null); then
    echo "Node.js not found; the test identity providers need >= $need_major.$need_minor: install Node 20 or 22 from nodejs.org or NodeSource (apt), then re-run make test" >&2
    exit 1
fi
version=${found#v}
major=${version%%.*}
rest=${version#*.}
minor=${rest%%.*}
case "$major$minor" in
    *[!0-9]* | "")
        echo "cannot read the Node.js version from 'node --version' ($found)" >&2
        exit 1
        ;;
esac
if [ "$major" -gt "$need_major" ] || { [ "$major" -eq "$need_major" ] && [ "$minor" -ge "$need_minor" ]; }; then
    exit 0
fi
echo "Node.js $major.x found ($found); the test identity providers need >= $need_major.$need_minor: install Node 20 or 22 from nodejs.org or NodeSource (apt), then re-run make test" >&2
exit 1
