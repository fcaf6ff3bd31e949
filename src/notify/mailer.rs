//! Email transport: lettre's async SMTP client (STARTTLS, implicit TLS, or plain to a loopback
//! relay; AUTH when configured), or, with no relay configured, `.eml` files in
//! `<data_dir>/outbox/`.

use crate::config::{EmailSettings, SmtpTls};
use anyhow::Context;
use lettre::{
    message::{Mailbox, MultiPart},
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
    },
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};
use std::path::Path;

use super::templates::Rendered;

/// Where email goes.
pub enum Mailer {
    /// A relay.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `.eml` files.
    File(AsyncFileTransport<Tokio1Executor>, std::path::PathBuf),
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailer::Smtp(_) => f.write_str("Mailer::Smtp"),
            Mailer::File(_, d) => write!(f, "Mailer::File({})", d.display()),
        }
    }
}

impl Mailer {
    /// Builds the transport `email` describes.
    pub fn new(email: &EmailSettings, data_dir: &Path) -> anyhow::Result<Mailer> {
        let Some(s) = &email.smtp else {
            let dir = data_dir.join("outbox");
            // Whatever this creates is this user's only: the data directory too, when the
            // outbox is the first thing made in it.
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            // A message may carry a token (email_includes_token): only this user reads them.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("cannot restrict {}", dir.display()))?;
            }
            return Ok(Mailer::File(AsyncFileTransport::new(&dir), dir));
        };
        let tls_params = || -> anyhow::Result<TlsParameters> {
            let mut b = TlsParameters::builder(s.host.clone());
            if let Some(ca) = &s.ca_file {
                let pem =
                    std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
                let cert = Certificate::from_pem(&pem)
                    .with_context(|| format!("{}: not a PEM certificate", ca.display()))?;
                b = b.add_root_certificate(cert);
            }
            Ok(b.build_rustls()?)
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .port(s.port)
            .timeout(Some(s.timeout));
        builder = match s.tls {
            SmtpTls::StartTls => builder.tls(Tls::Required(tls_params()?)),
            SmtpTls::Implicit => builder.tls(Tls::Wrapper(tls_params()?)),
            SmtpTls::None => builder.tls(Tls::None),
        };
        if let Some((user, pw)) = &s.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), pw.expose().to_string()));
        }
        Ok(Mailer::Smtp(builder.build()))
    }

    /// Sends one rendered message to `to`.
    pub async fn send(&self, from: &Mailbox, to: &str, msg: &Rendered) -> Result<(), String> {
        let to: Mailbox = to.parse().map_err(|e| format!("bad recipient {to}: {e}"))?;
        let email = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(msg.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                msg.text.clone(),
                msg.html.clone(),
            ))
            .map_err(|e| format!("cannot build the message: {e}"))?;
        match self {
            Mailer::Smtp(t) => t.send(email).await.map(|_| ()).map_err(|e| e.to_string()),
            Mailer::File(t, _) => t.send(email).await.map(|_| ()).map_err(|e| e.to_string()),
        }
    }
}
