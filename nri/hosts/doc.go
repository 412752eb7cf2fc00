// Package hosts writes and owns the hosts.toml files through which the NRI plugin
// points stock containerd's pulls of an image host at the master registries.
//
// containerd reads <config_path>/<host>/hosts.toml on every resolve and tries its
// [host."…"] entries in file order, then the server entry, which it appends last
// itself. A file it cannot parse, or an empty one, silently means no mirrors: every
// pull then goes to the image host. So the files are written whole and atomically,
// and only by Render, whose output is checked against containerd's own parser in the
// tests.
//
// Render gives the content for one image host and one order of its endpoints (the
// plugin's weighted, health-pruned order for this node; see internal/rendezvous).
// Each endpoint has a short dial_timeout, so that a master that is down costs one
// connect timeout before containerd moves on; dial_timeout bounds only the connect,
// not a master that accepts and then hangs.
//
// Manager writes those files under config_path, changing nothing on disk when the
// content is already there, and records in a state directory what it owns and the
// foreign files it replaced, so that it picks up after a restart and Uninstall
// restores config_path byte for byte. See Manager for the ownership rules.
package hosts
