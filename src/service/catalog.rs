//! The in-memory product catalog of one replica.
//!
//! The catalog is a cache: it is reloaded when `finmatch_products_changed` is notified (from
//! any replica), and a change made through this replica marks it stale so the next caller
//! reloads it first: it never serves products older than the caller's own committed changes.
//! While the listener is not connected (start-up, a broken connection) every caller checks the
//! catalog's version in the database instead, so a missed notification can never leave it stale.
//! It is never the authority for capacity or for whether a product is active: both are checked
//! in SQL when a referral is created.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use uuid::Uuid;

use super::lenders::stored_product;
use super::market::ENTERPRISES_CHANGED;
use super::{App, Result};
use crate::domain::RegionCode;
use crate::matching::{MatchProduct, ProductCatalog};
use crate::storage::catalog::CatalogVersion;
use crate::storage::listen::ListenEvent;
use crate::storage::{self, Connection};

/// The pause between two tries of a catalog reload that failed, and how many tries a change
/// gets before the watcher leaves the catalog stale (checked against the database per call).
const RELOAD_RETRY: Duration = Duration::from_secs(1);
const RELOAD_TRIES: u32 = 5;

/// The `application_name` of the connection listening for product changes.
pub const PRODUCT_LISTENER_NAME: &str = "finmatch product listener";

/// The channel the products and lenders triggers notify on.
pub const PRODUCTS_CHANGED: &str = "finmatch_products_changed";

/// What the catalog keeps about a product beyond what matching reads.
#[derive(Debug, Clone)]
pub struct ProductInfo {
    pub name: String,
    pub lender_name: String,
    pub response_sla_hours: i32,
}

/// Every product, as matching sees it, at one version of the database.
#[derive(Debug, Default)]
pub struct Catalog {
    version: CatalogVersion,
    products: ProductCatalog,
    info: HashMap<Uuid, ProductInfo>,
}

impl Catalog {
    pub fn info(&self, product_id: Uuid) -> Option<&ProductInfo> {
        self.info.get(&product_id)
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// The products, compiled for the engine.
    pub fn products(&self) -> &ProductCatalog {
        &self.products
    }
}

/// The shared, swappable catalog of one replica.
#[derive(Debug, Default)]
pub struct ProductCache {
    current: RwLock<Arc<Catalog>>,
    /// Set by a change made through this replica: the next caller reloads.
    stale: AtomicBool,
    /// True while the change listener is connected and has loaded the catalog since.
    listening: AtomicBool,
}

impl ProductCache {
    fn get(&self) -> Arc<Catalog> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set(&self, catalog: Arc<Catalog>) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = catalog;
    }

    /// Marks the catalog stale after a change committed through this replica.
    pub(crate) fn invalidate(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }
}

/// Reads every product and lender into a new catalog.
async fn load_catalog(conn: &mut Connection) -> Result<Catalog> {
    let version = storage::catalog::version(conn).await?;
    let rows = storage::catalog::products_with_lenders(conn).await?;
    let mut products = Vec::with_capacity(rows.len());
    let mut info = HashMap::with_capacity(rows.len());
    for (product, lender) in rows {
        let parsed = stored_product(&product)?;
        let regions = storage::lenders::strings(lender.region_codes)
            .iter()
            .filter_map(|code| RegionCode::parse_area(code).ok())
            .collect();
        products.push(MatchProduct::from_product(
            product.id,
            &parsed,
            lender.active,
            regions,
        ));
        info.insert(
            product.id,
            ProductInfo {
                name: product.name,
                lender_name: lender.name,
                response_sla_hours: product.response_sla_hours,
            },
        );
    }
    Ok(Catalog {
        version,
        products: ProductCatalog::new(products),
        info,
    })
}

impl App {
    /// The product catalog: the cached one while the change listener is connected and nothing
    /// changed through this replica since; otherwise checked against the database's version
    /// and reloaded first if it changed.
    pub(crate) async fn catalog(&self, conn: &mut Connection) -> Result<Arc<Catalog>> {
        let cache = self.products();
        // Cleared before the check, so a change committed during a reload marks it again.
        let stale = cache.stale.swap(false, Ordering::SeqCst);
        let cached = cache.get();
        if !stale && self.listening() {
            return Ok(cached);
        }
        let version = storage::catalog::version(conn).await?;
        if version == cached.version {
            return Ok(cached);
        }
        let fresh = Arc::new(load_catalog(conn).await?);
        cache.set(fresh.clone());
        Ok(fresh)
    }

    /// Like [`App::catalog`], taking a connection only when the catalog must be checked.
    pub(crate) async fn catalog_now(&self) -> Result<Arc<Catalog>> {
        let cache = self.products();
        if !cache.stale.load(Ordering::SeqCst) && self.listening() {
            return Ok(cache.get());
        }
        let mut conn = self.conn().await?;
        self.catalog(&mut conn).await
    }

    /// True while this replica's change listener is connected: the caches it keeps current
    /// (catalog, enterprises) may be trusted without asking the database.
    pub(crate) fn listening(&self) -> bool {
        self.products().listening.load(Ordering::SeqCst)
    }

    /// Whether this replica answers from its cached catalog (and enterprises): its product
    /// listener is live and the catalog was reloaded since it started listening.
    pub fn catalog_trusted(&self) -> bool {
        self.listening()
    }

    /// Reloads the product catalog now.
    pub async fn reload_products(&self) -> Result<usize> {
        let mut conn = self.conn().await?;
        let fresh = Arc::new(load_catalog(&mut conn).await?);
        let count = fresh.len();
        self.products().set(fresh);
        Ok(count)
    }

    /// Keeps the catalog and the enterprise cache current through the one LISTEN mechanism,
    /// `storage::listen`: once listening, clears the enterprise cache and loads the catalog;
    /// then reloads the catalog on `finmatch_products_changed` (once per burst) and drops the
    /// enterprises named by `finmatch_enterprises_changed`. While the listening connection is
    /// lost (until it listens again and the catalog is reloaded) the caches are not trusted and
    /// every call checks the database's catalog version. Runs until the task is dropped.
    pub async fn watch_products(self, database_url: String) {
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let channels = [PRODUCTS_CHANGED, ENTERPRISES_CHANGED];
        let listener =
            storage::listen::listen(&database_url, PRODUCT_LISTENER_NAME, &channels, |event| {
                let _ = tx.send(event);
            });
        let apply = async {
            // Listening, but the catalog not reloaded since: not trusted yet.
            let mut trust_pending = false;
            // A change (or a new connection) the catalog has not been reloaded for; a reload
            // that gave up is owed until one succeeds, and nothing is trusted meanwhile.
            let mut reload_owed = false;
            while let Some(first) = events.recv().await {
                let mut next = Some(first);
                while let Some(event) = next.take() {
                    match event {
                        ListenEvent::Listening => {
                            // Changes made before LISTEN took effect are picked up by this clear
                            // and the reload below.
                            self.enterprise_cache().clear();
                            trust_pending = true;
                            reload_owed = true;
                        }
                        ListenEvent::Lost => {
                            self.products().listening.store(false, Ordering::SeqCst);
                            trust_pending = false;
                        }
                        ListenEvent::Notification { channel, payload } => {
                            if channel == ENTERPRISES_CHANGED {
                                match payload.parse::<Uuid>() {
                                    Ok(id) => self.enterprise_cache().evict(id),
                                    Err(_) => self.enterprise_cache().clear(),
                                }
                            } else {
                                reload_owed = true;
                            }
                        }
                    }
                    next = events.try_recv().ok();
                }
                if reload_owed {
                    if !self.reload_products_until_done().await {
                        continue;
                    }
                    reload_owed = false;
                }
                // Trusted only once nothing that arrived during the reload is left to apply.
                if trust_pending && events.is_empty() {
                    self.products().listening.store(true, Ordering::SeqCst);
                    trust_pending = false;
                    tracing::debug!("product catalog trusted: listening for changes");
                }
            }
        };
        tokio::select! {
            _ = listener => {}
            () = apply => {}
        }
    }

    /// Reloads the catalog, trying again every [`RELOAD_RETRY`] while that fails; false (the
    /// catalog not trusted and marked stale, so calls check the database) when it gave up.
    async fn reload_products_until_done(&self) -> bool {
        for _ in 0..RELOAD_TRIES {
            match self.reload_products().await {
                Ok(count) => {
                    tracing::debug!(products = count, "product catalog reloaded");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reloading the product catalog failed");
                    tokio::time::sleep(RELOAD_RETRY).await;
                }
            }
        }
        self.products().listening.store(false, Ordering::SeqCst);
        self.products().stale.store(true, Ordering::SeqCst);
        false
    }
}
