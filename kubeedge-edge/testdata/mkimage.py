#!/usr/bin/env python3
"""Writes a one-layer OCI image archive holding Debian's static busybox (and a symlink per applet),
for tests that run real containers without a registry. Python standard library only.

usage: mkimage.py OUT.tar NAME[:TAG] [BUSYBOX]   (default BUSYBOX: /bin/busybox)
Import it with: ctr -a SOCK -n k8s.io images import OUT.tar
"""
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile


def entry(tf, path, kind, data=b"", mode=0o644, target=""):
    info = tarfile.TarInfo(path)
    info.mtime = 0
    info.mode = mode
    if kind == "dir":
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
    elif kind == "link":
        info.type = tarfile.SYMTYPE
        info.linkname = target
        tf.addfile(info)
    else:
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))


def main():
    out, name = sys.argv[1], sys.argv[2]
    busybox = sys.argv[3] if len(sys.argv) > 3 else "/bin/busybox"
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "var", "run"):
            entry(tf, d, "dir", mode=0o1777 if d == "tmp" else 0o755)
        with open(busybox, "rb") as f:
            entry(tf, "bin/busybox", "file", f.read(), 0o755)
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
        for applet in sorted(set(applets.stdout.split()) - {"busybox"}):
            entry(tf, "bin/" + applet, "link", mode=0o777, target="busybox")
        entry(tf, "etc/passwd", "file", b"root:x:0:0:root:/root:/bin/sh\n")
        entry(tf, "etc/group", "file", b"root:x:0:\n")
    layer_tar = layer.getvalue()
    layer_gz = gzip.compress(layer_tar, mtime=0)

    blobs = {}

    def blob(data, media):
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media, "digest": "sha256:" + digest, "size": len(data)}

    config = {
        "created": "1970-01-01T00:00:00Z", "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sleep", "2147483647"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(layer_gz, "application/vnd.oci.image.layer.v1.tar+gzip")],
    }
    manifest_desc = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    manifest_desc["annotations"] = {"io.containerd.image.name": name,
                                    "org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}
    with tarfile.open(out, "w") as tf:
        entry(tf, "blobs", "dir", mode=0o755)
        entry(tf, "blobs/sha256", "dir", mode=0o755)
        entry(tf, "oci-layout", "file", b'{"imageLayoutVersion":"1.0.0"}')
        entry(tf, "index.json", "file", json.dumps(index).encode())
        for digest, data in blobs.items():
            entry(tf, "blobs/sha256/" + digest, "file", data)


if __name__ == "__main__":
    main()
