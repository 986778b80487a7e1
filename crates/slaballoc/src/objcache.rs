//! A typed object cache (DragonFly's `objcache`): per-CPU magazines of constructed
//! objects in front of a depot of full and empty magazines, so a hot get/put pair
//! touches only the calling CPU's state, and constructors run only on fresh objects.
