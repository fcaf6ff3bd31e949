//! The operator credential: made once for a new store, replaced on demand.

use super::*;

/// A new operator credential, not yet valid anywhere (`replace_operator` makes it so).
pub fn new_operator_credential(ctx: &Ctx) -> Plain {
    credential::new_operator_credential(&ctx.config.tokens.prefix)
}

/// Makes `plain` the operator credential; the old one stops working.
pub async fn replace_operator(ctx: &Ctx, plain: &Plain) -> Result<()> {
    ctx.store
        .operator_replace(&plain.hash(), ctx.clock.now())
        .await?;
    Ok(())
}

/// On a store without an operator credential, makes one and returns it (once, to this caller
/// only); on a store that has one, returns `None`.
pub async fn init_operator(ctx: &Ctx) -> Result<Option<Plain>> {
    let plain = new_operator_credential(ctx);
    let created = ctx
        .store
        .operator_init(&plain.hash(), ctx.clock.now())
        .await?;
    Ok(created.then_some(plain))
}
