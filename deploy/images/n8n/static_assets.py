"""The editor's assets of an n8n image, generated once when the image is built instead of at
every main's boot.

n8n's main writes its editor's files (about 950 files, 56 MB for 2.22.6) into
`~/.cache/n8n/public` at every start (`Start.generateStaticAssets`, after the database's
migrations and before the modules and the server): 2 s of CPU and disk on an idle core, 3-4 s on
two busy ones. During an upgrade's switch that is inside the hold (requests wait at the edge
until the new main answers), and every tenant's main pays it again at each start.

`patch ROOT`: n8n's method is kept as `rp9GenerateStaticAssets` and wrapped: the wrapper skips
it when the directory holds a stamp of the inputs the files depend on (base path, front-end
hooks, the config tags with the REST endpoint and the Sentry settings, the REST endpoint), and
otherwise generates them as before and writes the stamp. A container whose configuration differs
from the image's therefore generates its own files, as n8n always did.

`generate ROOT NODE KEY=VALUE...`: runs that wrapper once with the image's environment (the
`ENV` build.sh gives the image; n8n's own code) into ROOT/home/node/.cache/n8n/public.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

START = "opt/n8n/node_modules/n8n/dist/commands/start.js"
ORIGINAL = "    async generateStaticAssets() {\n"
WRAPPER = """    async generateStaticAssets() {
        // rp9 (deploy/images/n8n/static_assets.py): the image holds these files, generated for
        // the inputs in the stamp; any other configuration generates its own, as n8n does.
        const rp9Key = JSON.stringify([
            this.globalConfig.path,
            this.globalConfig.externalFrontendHooksUrls,
            this.generateConfigTags(),
            this.globalConfig.endpoints.rest,
        ]);
        const rp9Dir = this.instanceSettings.staticCacheDir;
        const rp9Stamp = path_1.default.join(rp9Dir, '.rp9-generated');
        const rp9Same = (0, fs_1.existsSync)(rp9Stamp) && (0, fs_1.readFileSync)(rp9Stamp, 'utf-8');
        if (rp9Same === rp9Key) {
            return;
        }
        (0, fs_1.rmSync)(rp9Stamp, { force: true });
        await this.rp9GenerateStaticAssets();
        (0, fs_1.writeFileSync)(rp9Stamp, rp9Key);
    }
    async rp9GenerateStaticAssets() {
"""
# What n8n's bin/n8n loads before a command (its config, zod's `.alias`), then its Start command's
# own method on an instance that has only what the method reads.
GENERATE = """
require('reflect-metadata');
require('n8n/dist/config');
require('n8n/dist/zod-alias-support');
const { Container } = require('@n8n/di');
const { GlobalConfig } = require('@n8n/config');
const { Start } = require(process.argv[1]);
const start = Object.create(Start.prototype);
start.globalConfig = Container.get(GlobalConfig);
start.instanceSettings = { staticCacheDir: process.argv[2] };
start.generateStaticAssets().then(() => process.exit(0), (error) => {
  console.error(error);
  process.exit(1);
});
"""


def patch(root: Path) -> None:
    start = root / START
    text = start.read_text()
    if text.count(ORIGINAL) != 1 or "rp9GenerateStaticAssets" in text:
        raise SystemExit(f"{start}: n8n's generateStaticAssets is not where this patch expects it")
    # A new file, not an edit in place: the build's tree hard-links the cached npm install.
    patched = start.with_suffix(".js.rp9")
    patched.write_text(text.replace(ORIGINAL, WRAPPER))
    os.replace(patched, start)


def generate(root: Path, node: str, image_env: dict[str, str]) -> None:
    target = root / "home/node/.cache/n8n/public"
    # Loading n8n writes a settings file with a fresh encryption key into the user folder: a
    # throwaway one, never the image's (a tenant's main refuses a key that is not its own).
    with tempfile.TemporaryDirectory(prefix="rp9-n8n-assets-") as scratch:
        env = {**image_env, "PATH": "/usr/bin:/bin", "HOME": scratch, "N8N_USER_FOLDER": scratch}
        done = subprocess.run(
            [node, "-e", GENERATE, str(root / START), str(target)],
            cwd=root / "opt/n8n",
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    if done.returncode != 0:
        raise SystemExit(f"generating the editor's assets failed:\n{done.stdout}{done.stderr}")
    if not (target / ".rp9-generated").is_file() or not (target / "index.html").is_file():
        raise SystemExit(f"{target}: the editor's assets were not generated")


if __name__ == "__main__":
    command, root = sys.argv[1], Path(sys.argv[2])
    if command == "patch":
        patch(root)
    elif command == "generate":
        generate(root, sys.argv[3], dict(a.split("=", 1) for a in sys.argv[4:]))
    else:
        usage = "patch ROOT | generate ROOT NODE KEY=VALUE..."
        raise SystemExit(f"unknown command {command!r}: {usage}")
