# Homebrew formula for Conduit, built from the source of a release. The release
# workflow (.github/workflows/release.yml) fills in VERSION and SHA256 for the tag
# and attaches the result to the release, for a tap:
#   brew install --formula ./conduit.rb    (or from a tap repository holding it)
class Conduit < Formula
  desc "Fast, mutually authenticated TLS 1.3 tunnel: client, router and CLI"
  homepage "https://github.com/conduit-tunnel/conduit"
  url "https://github.com/conduit-tunnel/conduit/archive/refs/tags/vVERSION.tar.gz"
  sha256 "SHA256"
  license "Apache-2.0"
  head "https://github.com/conduit-tunnel/conduit.git", branch: "main"

  depends_on "rust" => :build

  def install
    system "cargo", "install", *std_cargo_args(path: "cli")
    pkgshare.install "deploy/router.example.toml", "deploy/conduit.example.toml"
  end

  def post_install
    (etc/"conduit").mkpath
    (var/"conduit").mkpath
  end

  def caveats
    <<~EOS
      Keys live in CONDUIT_HOME (default ~/.conduit): `conduit init` makes this
      machine's key. The router service (`brew services start conduit`) reads
      #{etc}/conduit/router.toml and keeps its keys in #{var}/conduit. Before
      starting it, make the router's key, the file of the clients it admits, and
      its configuration (it exits, and is started again, until they exist):
        CONDUIT_HOME=#{var}/conduit conduit init --name router
        echo 'ed25519:… laptop' >> #{var}/conduit/authorized_clients  # each client's `conduit init` line
        chmod 600 #{var}/conduit/authorized_clients
        cp #{opt_pkgshare}/router.example.toml #{etc}/conduit/router.toml  # then edit allow = [...]
        CONDUIT_HOME=#{var}/conduit conduit config validate --router -f #{etc}/conduit/router.toml
    EOS
  end

  service do
    run [opt_bin/"conduit", "router", "--config", etc/"conduit/router.toml"]
    environment_variables CONDUIT_HOME: var/"conduit"
    keep_alive true
    log_path var/"log/conduit-router.log"
    error_log_path var/"log/conduit-router.log"
  end

  test do
    assert_match "conduit #{version}", shell_output("#{bin}/conduit version")
    ENV["CONDUIT_HOME"] = testpath/"home"
    assert_match "ed25519:", shell_output("#{bin}/conduit init --name test")
    assert_path_exists testpath/"home/keys/test.key"
  end
end
