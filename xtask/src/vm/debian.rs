//! Debian's kernel packages: which one a suite ships, fetched from the mirror
//! apt uses, checked against the index and unpacked once into the cache.
//!
//! The index is trusted the way apt trusts it: `InRelease` is checked with
//! `gpgv` against Debian's archive keyring, `Packages.xz` against the hash
//! `InRelease` lists, and the `.deb` against the hash `Packages` lists.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};

/// One kernel of the matrix: a name for the report, the Debian suite that
/// ships it, the archive it is in, and the metapackage that names the
/// current image package.
pub struct KernelSource {
    pub name: &'static str,
    pub suite: &'static str,
    pub archive: Archive,
    pub metapackage: &'static str,
}

/// Where a suite lives.
#[derive(Clone, Copy)]
pub enum Archive {
    /// Debian's main archive, through the mirror apt uses.
    Main,
    /// The security archive: an old stable release gets its kernel
    /// updates (the LTS kernel real nodes run) only there; its main suite
    /// is frozen at the last point release.
    Security,
}

impl Archive {
    fn url(self) -> String {
        match self {
            Self::Main => mirror(),
            Self::Security => SECURITY_ARCHIVE.to_owned(),
        }
    }
}

/// The cloud flavour: it has everything the suite needs as modules (veth,
/// bridge, sch_ingress, cls_bpf) and BTF, and is a third the size of the
/// generic one, with no firmware to fetch.
pub const KERNELS: &[KernelSource] = &[
    KernelSource {
        name: "5.10",
        suite: "bullseye-security",
        archive: Archive::Security,
        metapackage: "linux-image-cloud-amd64",
    },
    KernelSource {
        name: "6.1",
        suite: "bookworm",
        archive: Archive::Main,
        metapackage: "linux-image-cloud-amd64",
    },
    KernelSource {
        name: "6.12",
        suite: "trixie",
        archive: Archive::Main,
        metapackage: "linux-image-cloud-amd64",
    },
];

/// An unpacked kernel package in the cache.
pub struct Kernel {
    pub package: String,
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the package.
    pub modules: PathBuf,
}

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY_ARCHIVE: &str = "http://security.debian.org/debian-security";
/// A cached index younger than this is used as it is.
const INDEX_MAX_AGE: Duration = Duration::from_hours(24);

/// Fetches (or finds in `cache`) the image package `source` names today.
pub fn kernel(source: &KernelSource, cache: &Path) -> Result<Kernel> {
    let mirror = source.archive.url();
    let packages = index(&mirror, source.suite, cache)?;
    let meta = stanza(&packages, source.metapackage)
        .with_context(|| format!("{} not in {}", source.metapackage, source.suite))?;
    let depends = field(meta, "Depends").context("metapackage without Depends")?;
    let image = depends
        .split([',', ' ', '('])
        .find(|name| name.starts_with("linux-image-"))
        .context("metapackage depends on no linux-image-*")?;
    let entry = stanza(&packages, image).with_context(|| format!("{image} not in the index"))?;
    let version = field(entry, "Version").context("no Version")?;
    let filename = field(entry, "Filename").context("no Filename")?;
    let sha256 = field(entry, "SHA256").context("no SHA256")?;
    let unpacked = cache
        .join("kernels")
        .join(format!("{image}_{version}").replace(['+', '~'], "_"));
    if !unpacked.join(".complete").exists() {
        let deb = cache.join("debs").join(
            Path::new(filename)
                .file_name()
                .context("Filename has no name")?,
        );
        if !deb.exists() || sha256_of(&deb)? != sha256 {
            download(&format!("{mirror}/{filename}"), &deb)?;
        }
        let got = sha256_of(&deb)?;
        if got != sha256 {
            bail!(
                "{} has sha256 {got}, the index says {sha256}",
                deb.display()
            );
        }
        let _ = fs::remove_dir_all(&unpacked);
        fs::create_dir_all(&unpacked)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        fs::write(unpacked.join(".complete"), "")?;
        println!("vm: {} {version} unpacked", source.name);
    }
    let vmlinuz = only_entry(&unpacked.join("boot"), "vmlinuz-")?;
    // trixie moved the modules to /usr/lib (merged /usr).
    let modules_root = [
        unpacked.join("lib/modules"),
        unpacked.join("usr/lib/modules"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .context("no lib/modules in the kernel package")?;
    let modules = only_entry(&modules_root, "")?;
    Ok(Kernel {
        package: image.to_owned(),
        version: version.to_owned(),
        vmlinuz,
        modules,
    })
}

/// The Debian mirror apt is configured with (deb822 or one-line sources),
/// else deb.debian.org.
fn mirror() -> String {
    let mut texts = Vec::new();
    for path in [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ] {
        if let Ok(text) = fs::read_to_string(path) {
            texts.push(text);
        }
    }
    texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .find(|word| word.starts_with("http") && word.trim_end_matches('/').ends_with("/debian"))
        .map_or_else(
            || DEFAULT_MIRROR.to_owned(),
            |m| m.trim_end_matches('/').to_owned(),
        )
}

/// The suite's verified `main/binary-amd64/Packages`, cached for a day.
fn index(mirror: &str, suite: &str, cache: &Path) -> Result<String> {
    let dir = cache.join("index").join(suite);
    fs::create_dir_all(&dir)?;
    let packages = dir.join("Packages");
    let fresh = fs::metadata(&packages)
        .and_then(|m| m.modified())
        .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() < INDEX_MAX_AGE);
    if !fresh && let Err(error) = refresh_index(mirror, suite, &dir) {
        if !packages.exists() {
            return Err(error);
        }
        println!("vm: {suite} index not refreshed ({error:#}); using the cached one");
    }
    fs::read_to_string(&packages).with_context(|| format!("reading {}", packages.display()))
}

fn refresh_index(mirror: &str, suite: &str, dir: &Path) -> Result<()> {
    let release = dir.join("InRelease");
    download(&format!("{mirror}/dists/{suite}/InRelease"), &release)?;
    let verified = Command::new("gpgv")
        .args(["--keyring", KEYRING])
        .arg(&release)
        .output()
        .context("cannot run gpgv (apt-get install gpgv debian-archive-keyring)")?;
    if !verified.status.success() {
        bail!(
            "{suite} InRelease does not verify against {KEYRING}: {}",
            String::from_utf8_lossy(&verified.stderr).trim()
        );
    }
    let release_text = fs::read_to_string(&release)?;
    let listed = "main/binary-amd64/Packages.xz";
    let want = release_text
        .lines()
        .skip_while(|l| !l.starts_with("SHA256:"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .find(|l| l.split_whitespace().nth(2) == Some(listed))
        .and_then(|l| l.split_whitespace().next())
        .with_context(|| format!("{suite} InRelease lists no {listed}"))?
        .to_owned();
    let xz = dir.join("Packages.xz");
    download(&format!("{mirror}/dists/{suite}/{listed}"), &xz)?;
    let got = sha256_of(&xz)?;
    if got != want {
        bail!("{suite} Packages.xz has sha256 {got}, InRelease says {want}");
    }
    let out = Command::new("xz").arg("-dc").arg(&xz).output()?;
    if !out.status.success() {
        bail!("xz cannot unpack {}", xz.display());
    }
    fs::write(dir.join("Packages"), out.stdout)?;
    Ok(())
}

/// The stanza of `package` in a Packages file (the last one if listed twice).
fn stanza<'a>(packages: &'a str, package: &str) -> Option<&'a str> {
    packages
        .split("\n\n")
        .filter(|s| field(s, "Package") == Some(package))
        .last()
}

fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}

/// The one entry of `dir` whose name starts with `prefix`.
fn only_entry(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect::<Vec<_>>();
    if found.len() != 1 {
        bail!(
            "expected one {prefix}* in {}, found {}",
            dir.display(),
            found.len()
        );
    }
    Ok(found.remove(0))
}

fn download(url: &str, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    let partial = to.with_extension("partial");
    println!("vm: fetching {url}");
    run(Command::new("curl")
        .args(["--fail", "--silent", "--show-error", "--location"])
        .args(["--retry", "3", "--max-time", "600", "-o"])
        .arg(&partial)
        .arg(url))?;
    fs::rename(&partial, to)?;
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    if !out.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", cmd.get_program().display()))?;
    if !status.success() {
        bail!("{} failed ({status})", cmd.get_program().display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKAGES: &str = "Package: linux-image-cloud-amd64\nVersion: 6.1.176-1\nDepends: linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)\n\nPackage: linux-image-6.1.0-50-cloud-amd64\nVersion: 6.1.176-1\nFilename: pool/main/l/x.deb\nSHA256: abc\n";

    #[test]
    fn finds_the_image_a_metapackage_names() {
        let meta = stanza(PACKAGES, "linux-image-cloud-amd64").unwrap();
        assert_eq!(
            field(meta, "Depends"),
            Some("linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)")
        );
        let image = stanza(PACKAGES, "linux-image-6.1.0-50-cloud-amd64").unwrap();
        assert_eq!(field(image, "Filename"), Some("pool/main/l/x.deb"));
        assert_eq!(field(image, "SHA256"), Some("abc"));
        assert!(stanza(PACKAGES, "linux-image").is_none());
    }
}
