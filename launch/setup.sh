#!/usr/bin/env bash
# Creates .venv in the repository root and installs the package (editable) with every extra,
# plus the Debian packages the bundled corpus needs. Safe to run again: it only adds what is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fluidsynth >/dev/null 2>&1 || need_apt+=(fluidsynth)
# General MIDI SoundFonts. The bundled corpus draws each stem from three (FluidR3,
# MuseScore General Lite, sf_GMbank: trackformer_jax.data.render.DEFAULT_SOUNDFONTS); the
# quickstart's held-out songs are rendered with a fourth, TimGM6mb, so its evaluation hears
# instruments training never heard. Two multisampled acoustic drum kits (avldrums): the
# bundled songs play half their acoustic drum parts on Black Pearl; Red Zeppelin is heard
# only in a held-out set.
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || need_apt+=(fluid-soundfont-gm)
[ -f /usr/share/sounds/sf3/MuseScore_General_Lite.sf3 ] || need_apt+=(musescore-general-soundfont-small)
[ -f /usr/share/sounds/sf2/sf_GMbank.sf2 ] || need_apt+=(csound-soundfont)
[ -f /usr/share/sounds/sf2/TimGM6mb.sf2 ] || need_apt+=(timgm6mb-soundfont)
[ -f /usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2 ] || need_apt+=(avldrums.lv2-soundfont)
python3 -c 'import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library("sndfile") else 1)' \
  || need_apt+=(libsndfile1)
# Tracker modules, rendered instrument by instrument (trackformer_jax.data.modules): libopenmpt
# decodes them (through ctypes: only the runtime library is needed), and these game data
# packages ship them (113 modules, about 36 MB to download in all).
python3 -c 'import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library("openmpt") else 1)' \
  || need_apt+=(libopenmpt0)
[ -d /usr/share/games/ironseed/sound ] || need_apt+=(ironseed-data)
[ -d /usr/share/games/pingus/data/music ] || need_apt+=(pingus-data)
[ -d /usr/share/games/heroes/mod ] || need_apt+=(heroes-sound-tracks)
[ -d /usr/share/games/tecnoballz/musics ] || need_apt+=(tecnoballz-data)
[ -d /usr/share/games/pekka-kana-2/data/music ] || need_apt+=(pekka-kana-2-data)
[ -d /usr/share/games/freedroid/sound ] || need_apt+=(freedroid-data)
[ -d /usr/share/games/biniax2/music ] || need_apt+=(biniax2-data)
[ -d /usr/share/games/bomberclone/music ] || need_apt+=(bomberclone-data)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # No recommends: ironseed-data, heroes-sound-tracks and bomberclone-data would pull in
  # their games; every file needed is checked above.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
# Reinstall only when setup.cfg changed since the last successful install.
stamp=.venv/.trackformer-setup
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  .venv/bin/pip install -q -e ".[data,eval,test]"
  touch "$stamp"
fi
