#!/bin/sh
# certbot deploy hook for apopd: copy the renewed certificate and key to where the apopd
# user can read them, then make apopd load them (SIGHUP; open sessions keep the old ones).
#
# Install (certbot runs every executable in this directory after each successful renewal):
#   install -m 0755 deploy/certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/apopd
# and in /etc/apopd/apopd.toml:
#   tls_cert = "/etc/apopd/tls/fullchain.pem"
#   tls_key  = "/etc/apopd/tls/privkey.pem"
# Run it once by hand after the first `certbot certonly`:
#   RENEWED_LINEAGE=/etc/letsencrypt/live/mail.example.org /etc/letsencrypt/renewal-hooks/deploy/apopd
set -eu

# The certificate name apopd uses (the directory under /etc/letsencrypt/live/).
APOPD_CERT_NAME=${APOPD_CERT_NAME:-mail.example.org}
APOPD_TLS_DIR=${APOPD_TLS_DIR:-/etc/apopd/tls}
APOPD_USER=${APOPD_USER:-apopd}

# certbot sets RENEWED_LINEAGE to the renewed certificate's live/ directory.
case "${RENEWED_LINEAGE:-}" in
    */"$APOPD_CERT_NAME") ;;
    *) exit 0 ;; # another certificate: not ours
esac

install -d -o "$APOPD_USER" -g "$APOPD_USER" -m 0700 "$APOPD_TLS_DIR"
# Write both, then rename both, so apopd never reads a new certificate with an old key.
for file in fullchain.pem privkey.pem; do
    install -o "$APOPD_USER" -g "$APOPD_USER" -m 0600 "$RENEWED_LINEAGE/$file" "$APOPD_TLS_DIR/.$file.new"
done
for file in fullchain.pem privkey.pem; do
    mv -f "$APOPD_TLS_DIR/.$file.new" "$APOPD_TLS_DIR/$file"
done

if systemctl is-active --quiet apopd; then
    systemctl reload apopd
fi
