//! placeholder: lookup (being written)
