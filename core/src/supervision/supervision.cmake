# Owned by the supervision work: flowreg::Supervisor (OTP supervision trees for threaded services).
target_sources(flowreg_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/supervisor.cpp)
