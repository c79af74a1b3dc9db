//! Sending e-mail over SMTP with lettre (pooled connections, rustls on aws-lc-rs when the URL
//! asks for TLS). SMTP failures are sorted as RFC 5321 sorts them: a 5xx reply is permanent
//! (the address does not exist, the message is refused), anything else (a 4xx reply, a refused
//! or dropped connection, a timeout) may pass on a later attempt.

use std::time::{Duration, Instant};

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Attachment, Mailbox, MultiPart, SinglePart, header::ContentType},
};
use uuid::Uuid;

use crate::{delivery::Failure, metrics, render::Rendered};

/// The configuration cannot make a mailer.
#[derive(Debug, thiserror::Error)]
pub enum MailConfigError {
    /// `SMTP_URL` is not an SMTP URL lettre understands.
    #[error("invalid SMTP_URL: {0}")]
    Url(#[source] lettre::transport::smtp::Error),
    /// `MAIL_FROM` is not a mailbox (`Name <address>` or `address`).
    #[error("invalid MAIL_FROM: {0}")]
    From(#[source] lettre::address::AddressError),
}

/// Sends e-mails through one SMTP server.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// A mailer for `smtp_url` (connections are opened on demand, so the server may be down).
    pub fn new(smtp_url: &str, timeout: Duration, from: &str) -> Result<Self, MailConfigError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
            .map_err(MailConfigError::Url)?
            .timeout(Some(timeout))
            .build();
        let from = from.parse().map_err(MailConfigError::From)?;
        Ok(Self { transport, from })
    }

    /// Sends `mail` to `name <address>`. `notification` becomes the `Message-ID`, so a message
    /// sent again after a crash (between SMTP's answer and the ledger update) carries the same
    /// id and mail clients can tell it is the same message.
    #[tracing::instrument(skip(self, mail, name, address), fields(subject = %mail.subject))]
    pub async fn send(&self, notification: Uuid, name: &str, address: &str, mail: &Rendered) -> Result<(), Failure> {
        let message = self.message(notification, name, address, mail)?;
        let started = Instant::now();
        let sent = self.transport.send(message).await;
        let seconds = started.elapsed().as_secs_f64();
        match sent {
            Ok(_) => {
                metrics::smtp("sent", seconds);
                Ok(())
            }
            Err(err) => {
                let failure = classify(&err);
                metrics::smtp(failure.label(), seconds);
                Err(failure)
            }
        }
    }

    fn message(&self, notification: Uuid, name: &str, address: &str, mail: &Rendered) -> Result<Message, Failure> {
        let address = address
            .parse()
            .map_err(|err| Failure::Permanent(format!("invalid recipient address {address:?}: {err}")))?;
        let to = Mailbox::new(Some(name.to_owned()), address);
        let body = if mail.images.is_empty() {
            MultiPart::alternative_plain_html(mail.text.clone(), mail.html.clone())
        } else {
            let png = ContentType::parse("image/png").expect("a valid content type");
            let related = mail.images.iter().fold(
                MultiPart::related().singlepart(SinglePart::html(mail.html.clone())),
                |related, image| {
                    related.singlepart(
                        Attachment::new_inline(image.content_id.clone()).body(image.png.clone(), png.clone()),
                    )
                },
            );
            MultiPart::alternative()
                .singlepart(SinglePart::plain(mail.text.clone()))
                .multipart(related)
        };
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .message_id(Some(format!("<{notification}@floodgate>")))
            .multipart(body)
            .map_err(|err| Failure::Permanent(format!("cannot build the message: {err}")))
    }
}

/// 5xx replies are permanent; everything else is worth another attempt.
fn classify(err: &lettre::transport::smtp::Error) -> Failure {
    let message = err.to_string();
    if err.is_permanent() {
        Failure::Permanent(message)
    } else {
        Failure::Transient(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The connection pool runs on the runtime.
    #[tokio::test]
    async fn a_bad_address_is_a_permanent_failure_and_a_bad_url_a_configuration_error() {
        let mailer = Mailer::new("smtp://127.0.0.1:1", Duration::from_secs(1), "Floodgate <a@b.test>").unwrap();
        let mail = Rendered {
            subject: "s".into(),
            html: "<p>h</p>".into(),
            text: "t".into(),
            images: Vec::new(),
        };
        let built = mailer.message(Uuid::now_v7(), "Fan", "not an address", &mail);
        assert!(matches!(built, Err(Failure::Permanent(_))));
        assert!(mailer.message(Uuid::now_v7(), "Fan", "fan@example.test", &mail).is_ok());
        assert!(matches!(
            Mailer::new("http://x", Duration::from_secs(1), "a@b.test"),
            Err(MailConfigError::Url(_))
        ));
        assert!(matches!(
            Mailer::new("smtp://x", Duration::from_secs(1), "nobody"),
            Err(MailConfigError::From(_))
        ));
    }

    #[tokio::test]
    async fn nothing_listening_is_a_transient_failure() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mailer = Mailer::new(&format!("smtp://127.0.0.1:{port}"), Duration::from_secs(2), "a@b.test").unwrap();
        let mail = Rendered {
            subject: "s".into(),
            html: "h".into(),
            text: "t".into(),
            images: Vec::new(),
        };
        let sent = mailer.send(Uuid::now_v7(), "Fan", "fan@example.test", &mail).await;
        assert!(matches!(sent, Err(Failure::Transient(_))), "{sent:?}");
    }
}
