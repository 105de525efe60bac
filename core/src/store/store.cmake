# Owned by the store work: target_sources(flowreg_core PRIVATE ...) and pqxx linking.
