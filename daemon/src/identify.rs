//! placeholder: identify (being written)
