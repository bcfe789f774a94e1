//! Profiles: a display name, an "about" line and a photo (the renditions of a public image:
//! `POST /v1/media/public` crops, resizes and strips every metadata), what each viewer
//! sees of them under the owner's privacy settings (`cores::privacy::profile`), and the
//! `ProfileChanged` notice that tells contacts and conversation members to fetch it again.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::actors::messages::SessionRequest;
use crate::actors::router::Router;
use crate::cores::privacy::{self, Audience, Relation};
use crate::ids::UserId;
use crate::protocol::{self, RequestError, id_bytes, pb, server_frame};
use crate::store::{MediaKind, Profile, ProfilePhoto, Store, now_ms};

/// Longest display name, characters (WhatsApp's).
pub const MAX_NAME: usize = 25;
/// Longest "about" line, characters (WhatsApp's).
pub const MAX_ABOUT: usize = 139;

/// A change to the caller's profile; absent fields stay as they are.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    /// 1 to 25 characters, trimmed.
    #[schema(example = "Ana")]
    pub name: Option<String>,
    /// At most 139 characters, trimmed (empty: none).
    #[schema(example = "At the gym")]
    pub about: Option<String>,
    /// The renditions of a public image the caller uploaded; `null` removes the photo.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<ProfilePhoto>)]
    pub photo: Option<Option<ProfilePhoto>>,
}

/// A field that is present (`null` included) as `Some`: absent stays `None` (its default).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<ProfilePhoto>>, D::Error> {
    Option::<ProfilePhoto>::deserialize(d).map(Some)
}

/// A profile as one viewer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProfileAnswer {
    /// Whose.
    #[schema(value_type = String, format = Uuid)]
    pub user_id: UserId,
    /// Display name (empty if never set).
    pub name: String,
    /// The "about" line, when the owner's settings show it to this viewer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub about: Option<String>,
    /// The photo, when the owner's settings show it to this viewer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub photo: Option<ProfilePhoto>,
    /// When it last changed, ms since the Unix epoch (0: never set).
    pub updated_ms: u64,
}

/// Checks a photo: renditions that are public images uploaded by `owner`.
async fn check_photo(store: &dyn Store, owner: UserId, photo: &ProfilePhoto) -> Result<(), RequestError> {
    for id in [photo.small, photo.large] {
        match store.media(id).await? {
            Some(m) if m.owner == owner && m.kind == MediaKind::PublicImage => {}
            _ => return Err(RequestError::invalid(format!("photo: {id} is not a public image of yours (upload it with POST /v1/media/public)"))),
        }
    }
    Ok(())
}

/// Which parts of a profile a change touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// The name.
    pub name: bool,
    /// The "about" line.
    pub about: bool,
    /// The photo.
    pub photo: bool,
    /// The renditions of a photo replaced or removed (no longer named by the profile: the
    /// caller deletes them, `MediaService::delete_public_image`).
    pub dropped_photo: Vec<crate::store::MediaId>,
}

/// Applies `patch` to `owner`'s profile and stores it; answers the new profile and what
/// changed.
///
/// Errors: `InvalidArgument` for a name of 0 or more than [`MAX_NAME`] characters, an
/// about line over [`MAX_ABOUT`], or a photo that is not the caller's public image;
/// `Unavailable` when the store fails.
pub async fn change(store: &dyn Store, owner: UserId, patch: ProfilePatch) -> Result<(Profile, Changed), RequestError> {
    let before = store.profile(owner).await?.unwrap_or_default();
    let mut profile = before.clone();
    if let Some(name) = patch.name {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME {
            return Err(RequestError::invalid(format!("name must be 1 to {MAX_NAME} characters")));
        }
        profile.name = name.to_owned();
    }
    if let Some(about) = patch.about {
        let about = about.trim();
        if about.chars().count() > MAX_ABOUT {
            return Err(RequestError::invalid(format!("about must be at most {MAX_ABOUT} characters")));
        }
        profile.about = about.to_owned();
    }
    if let Some(photo) = patch.photo {
        if let Some(p) = &photo {
            check_photo(store, owner, p).await?;
        }
        profile.photo = photo;
    }
    profile.updated_ms = now_ms();
    store.set_profile(owner, profile.clone()).await?;
    let kept: Vec<_> = profile.photo.iter().flat_map(|p| [p.small, p.large]).collect();
    let dropped_photo = before.photo.iter().flat_map(|p| [p.small, p.large]).filter(|id| !kept.contains(id)).collect();
    let changed =
        Changed { name: profile.name != before.name, about: profile.about != before.about, photo: profile.photo != before.photo, dropped_photo };
    Ok((profile, changed))
}

/// `owner`'s profile as `viewer` may see it (all of it for the owner).
pub async fn view(store: &dyn Store, viewer: UserId, owner: UserId) -> Result<ProfileAnswer, RequestError> {
    let Some(profile) = store.profile(owner).await? else {
        if store.user(owner).await?.is_none() {
            return Err(RequestError::UnknownUser(owner.to_string()));
        }
        return Ok(ProfileAnswer { user_id: owner, name: String::new(), about: None, photo: None, updated_ms: 0 });
    };
    let shown = if viewer == owner {
        privacy::ProfileView { photo: true, about: true }
    } else {
        let settings = store.privacy(owner).await?;
        let blocked = store.is_blocked(owner, viewer).await? || store.is_blocked(viewer, owner).await?;
        let needs_contact = settings.profile_photo == Audience::Contacts || settings.about == Audience::Contacts;
        let contact = !blocked && needs_contact && {
            let phone = store.user(viewer).await?.map(|u| u.phone).unwrap_or_default();
            !store.known_contacts(owner, vec![phone]).await?.is_empty()
        };
        privacy::profile(&settings, Relation { contact, blocked })
    };
    Ok(ProfileAnswer {
        user_id: owner,
        name: profile.name,
        about: shown.about.then_some(profile.about),
        photo: profile.photo.filter(|_| shown.photo),
        updated_ms: profile.updated_ms,
    })
}

/// Tells the user's own devices, and every user who shares a conversation with them
/// (not across a block, groups included) and may see what changed, that `owner`'s
/// profile changed: a new name reaches them all; a new about line or photo only those
/// its privacy setting shows it to (a notice would tell the others that a hidden field
/// changed). Nothing changed: nobody is told.
pub async fn tell_changed(store: &dyn Store, router: &Router, owner: UserId, changed: Changed) -> Result<(), RequestError> {
    if changed == Changed::default() {
        return Ok(());
    }
    let blocked: HashSet<UserId> = store.blocks_of(owner).await?.into_iter().chain(store.blockers_of(owner).await?).collect();
    let mut audience: Vec<UserId> = crate::keys::visible_users(store, owner).await?.into_iter().filter(|u| !blocked.contains(u)).collect();
    if !changed.name {
        let settings = store.privacy(owner).await?;
        let audiences: Vec<Audience> =
            [(changed.about, settings.about), (changed.photo, settings.profile_photo)].into_iter().filter(|(c, _)| *c).map(|(_, a)| a).collect();
        // The widest audience among the changed fields decides who hears of it.
        let contacts = if audiences.contains(&Audience::Everyone) {
            None
        } else if audiences.contains(&Audience::Contacts) {
            Some(crate::privacy::contacts_among(store, owner, &audience).await?)
        } else {
            Some(HashSet::new())
        };
        if let Some(allowed) = contacts {
            audience.retain(|u| *u == owner || allowed.contains(u));
        }
    }
    let frame = protocol::encode_server(&protocol::server(server_frame::Kind::ProfileChanged(pb::ProfileChanged { user_id: id_bytes(owner) })));
    router.deliver_to_users(&audience, None, || SessionRequest::Push(frame.clone()));
    Ok(())
}
