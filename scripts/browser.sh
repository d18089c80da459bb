#!/usr/bin/env bash
# Best effort: make Debian's headless Chromium and ChromeDriver available for the browser
# tests (the report rendering and the web page). Installs them with apt when they are missing
# and this user may (root); otherwise says so and the browser tests skip. Never fails.
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "covidct: chromium/chromedriver not installed: browser tests will be skipped" \
       "(apt-get install chromium chromium-driver)" >&2
  exit 0
fi
echo "covidct: installing chromium and chromium-driver for the browser tests (about 40 s, once)" >&2
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         chromium chromium-driver; } >/tmp/covidct-browser-install.log 2>&1; then
  echo "covidct: could not install chromium (see /tmp/covidct-browser-install.log):" \
       "browser tests will be skipped" >&2
fi
exit 0
