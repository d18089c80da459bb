#!/usr/bin/env bash
# Best effort: make Debian's Orthanc (a real PACS for the DICOM node tests), dcmtk (dcmdump,
# storescu) and dicom3tools (dciodvfy) available. Installs the missing ones with apt when this
# user may (root); otherwise says so and the tests that need them skip. Never fails.
missing=()
command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)
command -v dcmdump >/dev/null 2>&1 || missing+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "covidct: ${missing[*]} not installed: the Orthanc/DICOM validation tests will be skipped" \
       "(apt-get install ${missing[*]})" >&2
  exit 0
fi
echo "covidct: installing ${missing[*]} for the DICOM tests (about a minute, once)" >&2
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         --no-install-recommends "${missing[@]}"; } >/tmp/covidct-dicom-tools-install.log 2>&1; then
  echo "covidct: could not install ${missing[*]} (see /tmp/covidct-dicom-tools-install.log):" \
       "those tests will be skipped" >&2
fi
# The package's own service is not wanted: the tests start Orthanc with their own config.
exit 0
